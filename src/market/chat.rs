//! The AI chat's model: an OpenAI-compatible `POST <url>/chat/completions` with `stream: true`,
//! read as server-sent events (`data: {json}` lines, ending with `data: [DONE]`). The answer's
//! text arrives as `choices[0].delta.content` pieces; token counts come in the final `usage`
//! (asked for with `stream_options.include_usage`), when the endpoint reports them.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    auth::Secret,
    error::{Error, Result},
};

/// Longest line of the event stream accepted (a runaway endpoint cannot fill memory).
const MAX_LINE: usize = 1024 * 1024;

pub struct ChatEndpoint {
    http: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<Secret>,
    /// Messages each user may send per minute.
    pub per_minute: u32,
}

/// One event of an answer.
#[derive(Debug, PartialEq)]
pub enum ChatEvent {
    /// The next piece of text.
    Delta(String),
    /// Token counts of the prompt and the answer.
    Usage { prompt: i32, completion: i32 },
}

impl ChatEndpoint {
    pub fn new(
        url: &str,
        model: &str,
        api_key: Option<Secret>,
        per_minute: u32,
    ) -> anyhow::Result<Self> {
        Ok(ChatEndpoint {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(120))
                .build()?,
            url: format!("{}/chat/completions", url.trim_end_matches('/')),
            model: model.to_owned(),
            api_key,
            per_minute,
        })
    }

    /// Asks for a completion of `messages` (`{"role", "content"}` objects) and returns its
    /// stream once the endpoint has accepted the request.
    pub async fn ask(&self, messages: Vec<Value>) -> Result<ChatStream> {
        let mut request = self.http.post(&self.url).json(&json!({
            "model": self.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        }));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose());
        }
        let response = request
            .send()
            .await
            .map_err(|e| Error::Unavailable(format!("the AI endpoint cannot be reached: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::Unavailable(format!(
                "the AI endpoint answered HTTP {status}"
            )));
        }
        Ok(ChatStream {
            response,
            buffer: Vec::new(),
            done: false,
        })
    }
}

/// An answer as it streams.
pub struct ChatStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
    done: bool,
}

impl ChatStream {
    /// The next event; `None` at the end of the answer.
    pub async fn next(&mut self) -> Result<Option<ChatEvent>> {
        loop {
            while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if let Some(event) = self.parse_line(&line)? {
                    return Ok(Some(event));
                }
            }
            if self.done {
                return Ok(None);
            }
            if self.buffer.len() > MAX_LINE {
                return Err(Error::Unavailable(
                    "the AI endpoint sent an overlong event".into(),
                ));
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => {
                    // The last line may lack its newline.
                    self.done = true;
                    if !self.buffer.is_empty() {
                        self.buffer.push(b'\n');
                    }
                }
                Err(e) => {
                    return Err(Error::Unavailable(format!(
                        "the AI endpoint's answer broke off: {e}"
                    )));
                }
            }
        }
    }

    fn parse_line(&mut self, line: &[u8]) -> Result<Option<ChatEvent>> {
        let line = String::from_utf8_lossy(line);
        let Some(data) = line.trim().strip_prefix("data:") else {
            return Ok(None);
        };
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            self.buffer.clear();
            return Ok(None);
        }
        let event: Value = serde_json::from_str(data)
            .map_err(|_| Error::Unavailable("the AI endpoint sent malformed JSON".into()))?;
        if let Some(error) = event.get("error") {
            return Err(Error::Unavailable(format!(
                "the AI endpoint failed: {}",
                error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("no message")
            )));
        }
        if let Some(text) = event
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            return Ok(Some(ChatEvent::Delta(text.to_owned())));
        }
        if let Some(usage) = event.get("usage").filter(|u| u.is_object()) {
            let count = |name: &str| {
                usage
                    .get(name)
                    .and_then(Value::as_i64)
                    .map_or(0, |n| n.clamp(0, i64::from(i32::MAX)) as i32)
            };
            return Ok(Some(ChatEvent::Usage {
                prompt: count("prompt_tokens"),
                completion: count("completion_tokens"),
            }));
        }
        Ok(None)
    }
}
