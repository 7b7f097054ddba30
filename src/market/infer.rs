//! Schema and sample inference for uploaded CSV and JSON-lines datasets, as the plaintext streams
//! by: the first MiB is kept to infer column types (from up to 1,000 rows) and take the first 10
//! rows as a sample; rows are counted over the whole file (CSV with a real parser, so quoted
//! newlines do not count).

use serde_json::{Map, Value, json};

/// Bytes kept from the start of the file for inference.
const HEAD: usize = 1024 * 1024;
/// Rows whose values decide the column types.
const TYPED_ROWS: usize = 1000;
/// Rows kept as the sample.
const SAMPLE_ROWS: usize = 10;
/// Most columns described (wider files keep the first ones).
const MAX_COLUMNS: usize = 256;
/// Largest sample kept, as JSON text: it travels with every GetDatapod.
const MAX_SAMPLE_BYTES: usize = 64 * 1024;
/// Deepest nesting kept in a sample value (deeper parts become their JSON text): clients'
/// protobuf decoders stop at 100 levels, and every JSON level is two protobuf ones.
const MAX_DEPTH: usize = 8;
/// Longest string kept in a sample or a column name, in characters.
const MAX_STRING: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    JsonLines,
    Other,
}

/// The format a MIME type names.
pub fn format_of(file_type: &str) -> Format {
    let essence = file_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "text/csv" | "application/csv" => Format::Csv,
        "application/x-ndjson"
        | "application/jsonl"
        | "application/x-jsonlines"
        | "application/jsonlines" => Format::JsonLines,
        _ => Format::Other,
    }
}

pub struct Inference {
    format: Format,
    head: Vec<u8>,
    truncated: bool,
    records: u64,
    csv: csv_core::Reader,
    line_has_content: bool,
}

impl Inference {
    pub fn new(format: Format) -> Self {
        Inference {
            format,
            head: Vec::new(),
            truncated: false,
            records: 0,
            csv: csv_core::Reader::new(),
            line_has_content: false,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        // An empty slice is csv-core's end of input: it would end a record mid-way.
        if self.format == Format::Other || chunk.is_empty() {
            return;
        }
        let room = HEAD - self.head.len();
        self.head.extend_from_slice(&chunk[..chunk.len().min(room)]);
        self.truncated |= chunk.len() > room;
        match self.format {
            Format::Csv => self.count_csv(chunk),
            Format::JsonLines => {
                for &byte in chunk {
                    if byte == b'\n' {
                        self.records += u64::from(self.line_has_content);
                        self.line_has_content = false;
                    } else if !byte.is_ascii_whitespace() {
                        self.line_has_content = true;
                    }
                }
            }
            Format::Other => {}
        }
    }

    fn count_csv(&mut self, mut input: &[u8]) {
        let mut output = [0u8; 4096];
        let mut ends = [0usize; 256];
        loop {
            let (result, read, _, _) = self.csv.read_record(input, &mut output, &mut ends);
            input = &input[read..];
            match result {
                csv_core::ReadRecordResult::Record => self.records += 1,
                csv_core::ReadRecordResult::InputEmpty | csv_core::ReadRecordResult::End => {
                    return;
                }
                // Field contents are not needed, only record boundaries: reuse the buffers.
                csv_core::ReadRecordResult::OutputFull
                | csv_core::ReadRecordResult::OutputEndsFull => {}
            }
        }
    }

    /// The schema (`format`, `columns`, `row_count`) and the sample rows; `None`s for other
    /// formats or content that does not parse as its type says.
    pub fn finish(mut self) -> (Option<Value>, Option<Value>) {
        match self.format {
            Format::Csv => {
                self.count_csv(&[]);
                let rows = self.records.saturating_sub(1);
                self.csv_schema(rows)
                    .map_or((None, None), |(s, d)| (Some(s), Some(d)))
            }
            Format::JsonLines => {
                let rows = self.records + u64::from(self.line_has_content);
                self.jsonl_schema(rows)
                    .map_or((None, None), |(s, d)| (Some(s), Some(d)))
            }
            Format::Other => (None, None),
        }
    }

    /// The head without a partial last line.
    fn complete_head(&self) -> &[u8] {
        if !self.truncated {
            return &self.head;
        }
        match self.head.iter().rposition(|&b| b == b'\n') {
            Some(end) => &self.head[..=end],
            None => &[],
        }
    }

    fn csv_schema(&self, rows: u64) -> Option<(Value, Value)> {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(self.complete_head());
        let names: Vec<String> = reader
            .headers()
            .ok()?
            .iter()
            .take(MAX_COLUMNS)
            .map(clean_string)
            .collect();
        let mut types: Vec<Option<&'static str>> = vec![None; names.len()];
        let mut sample = Vec::new();
        for record in reader.records().take(TYPED_ROWS) {
            let record = record.ok()?;
            let mut row = Map::new();
            for (i, field) in record.iter().enumerate().take(MAX_COLUMNS) {
                let value = csv_value(field);
                if let Some(slot) = types.get_mut(i) {
                    *slot = merge(*slot, type_of(&value), "string");
                }
                if sample.len() < SAMPLE_ROWS {
                    let name = names
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("column_{}", i + 1));
                    row.insert(name, value);
                }
            }
            if sample.len() < SAMPLE_ROWS {
                sample.push(Value::Object(row));
            }
        }
        let columns: Vec<Value> = names
            .iter()
            .zip(types)
            .map(|(name, kind)| json!({"name": name, "type": kind.unwrap_or("null")}))
            .collect();
        Some((
            json!({"format": "csv", "columns": columns, "row_count": rows}),
            bounded_sample(sample),
        ))
    }

    fn jsonl_schema(&self, rows: u64) -> Option<(Value, Value)> {
        let text = std::str::from_utf8(self.complete_head()).ok()?;
        let mut columns: Vec<(String, Option<&'static str>)> = Vec::new();
        let mut sample = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(TYPED_ROWS)
        {
            let value: Value = serde_json::from_str(line).ok()?;
            if let Value::Object(object) = &value {
                for (key, field) in object {
                    let full = columns.len() >= MAX_COLUMNS;
                    match columns.iter_mut().find(|(name, _)| name == key) {
                        Some((_, kind)) => *kind = merge(*kind, type_of(field), "mixed"),
                        None if !full => columns.push((key.clone(), Some(type_of(field)))),
                        None => {}
                    }
                }
            }
            if sample.len() < SAMPLE_ROWS {
                sample.push(value);
            }
        }
        let columns: Vec<Value> = columns
            .into_iter()
            .map(
                |(name, kind)| json!({"name": clean_string(&name), "type": kind.unwrap_or("null")}),
            )
            .collect();
        Some((
            json!({"format": "jsonl", "columns": columns, "row_count": rows}),
            bounded_sample(sample),
        ))
    }
}

/// Text as stored: no NUL (PostgreSQL's JSONB refuses it), at most [`MAX_STRING`] characters.
fn clean_string(text: &str) -> String {
    text.chars()
        .take(MAX_STRING)
        .map(|c| if c == '\0' { '\u{fffd}' } else { c })
        .collect()
}

/// A sample value made safe to store and send: strings cleaned, nesting cut at [`MAX_DEPTH`]
/// (deeper parts kept as their JSON text).
fn bounded(value: Value, depth: usize) -> Value {
    match value {
        Value::String(text) => Value::String(clean_string(&text)),
        Value::Array(_) | Value::Object(_) if depth >= MAX_DEPTH => {
            Value::String(clean_string(&value.to_string()))
        }
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| bounded(v, depth + 1)).collect())
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .take(MAX_COLUMNS)
                .map(|(k, v)| (clean_string(&k), bounded(v, depth + 1)))
                .collect(),
        ),
        other => other,
    }
}

/// The sample rows that fit in [`MAX_SAMPLE_BYTES`], each bounded.
fn bounded_sample(rows: Vec<Value>) -> Value {
    let mut kept = Vec::new();
    let mut size = 2;
    for row in rows {
        let row = bounded(row, 1);
        size += row.to_string().len() + 1;
        if size > MAX_SAMPLE_BYTES {
            break;
        }
        kept.push(row);
    }
    Value::Array(kept)
}

/// A CSV field as the JSON value it most plausibly is.
fn csv_value(field: &str) -> Value {
    if field.is_empty() {
        return Value::Null;
    }
    if let Ok(integer) = field.parse::<i64>() {
        return Value::from(integer);
    }
    if let Ok(number) = field.parse::<f64>()
        && number.is_finite()
    {
        return Value::from(number);
    }
    match field {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(field.to_owned()),
    }
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Two observed types of one column as one: nulls give way, integers widen to numbers, anything
/// else disagreeing becomes `fallback`.
fn merge(
    known: Option<&'static str>,
    seen: &'static str,
    fallback: &'static str,
) -> Option<&'static str> {
    Some(match (known, seen) {
        (None, seen) | (Some("null"), seen) => seen,
        (Some(known), "null") => known,
        (Some(a), b) if a == b => a,
        (Some("integer"), "number") | (Some("number"), "integer") => "number",
        _ => fallback,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infer(format: Format, data: &[u8], piece: usize) -> (Option<Value>, Option<Value>) {
        let mut inference = Inference::new(format);
        for chunk in data.chunks(piece) {
            inference.push(chunk);
        }
        inference.finish()
    }

    #[test]
    fn csv_columns_types_rows_and_sample() {
        let mut data = String::from("id,name,score,active,note\n");
        for i in 0..25 {
            data.push_str(&format!(
                "{i},\"Name, {i}\",{}.5,{},\"multi\nline\"\n",
                i,
                i % 2 == 0
            ));
        }
        data.push_str("25,last,7,true,"); // no final newline
        for piece in [1, 7, 4096] {
            let (schema, sample) = infer(Format::Csv, data.as_bytes(), piece);
            let schema = schema.unwrap();
            assert_eq!(schema["row_count"], 26, "piece {piece}");
            let types: Vec<&str> = schema["columns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["type"].as_str().unwrap())
                .collect();
            assert_eq!(types, ["integer", "string", "number", "boolean", "string"]);
            let sample = sample.unwrap();
            assert_eq!(sample.as_array().unwrap().len(), 10);
            assert_eq!(sample[1]["name"], "Name, 1");
            assert_eq!(sample[1]["note"], "multi\nline");
        }
    }

    #[test]
    fn json_lines_columns_rows_and_sample() {
        let data = b"{\"a\":1,\"b\":\"x\"}\n\n{\"a\":2.5,\"c\":null}\n{\"a\":3,\"b\":true}";
        let (schema, sample) = infer(Format::JsonLines, data, 5);
        let schema = schema.unwrap();
        assert_eq!(schema["row_count"], 3);
        assert_eq!(
            schema["columns"],
            json!([{"name":"a","type":"number"},{"name":"b","type":"mixed"},{"name":"c","type":"null"}])
        );
        assert_eq!(sample.unwrap().as_array().unwrap().len(), 3);
    }

    #[test]
    fn samples_are_bounded_and_storable() {
        let deep = format!("{}1{}", "[".repeat(50), "]".repeat(50));
        let wide: String = (0..1000)
            .map(|i| format!("\"k{i}\":\"{}\"", "v".repeat(100)))
            .collect::<Vec<_>>()
            .join(",");
        let data = format!("{deep}\n{{{wide}}}\n{{\"nul\":\"a\\u0000b\"}}\n");
        let (schema, sample) = infer(Format::JsonLines, data.as_bytes(), 4096);
        assert_eq!(
            schema.unwrap()["columns"].as_array().unwrap().len(),
            MAX_COLUMNS
        );
        let sample = sample.unwrap();
        assert!(sample.to_string().len() <= MAX_SAMPLE_BYTES);
        fn depth(v: &Value) -> usize {
            match v {
                Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
                Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
                _ => 0,
            }
        }
        assert!(depth(&sample) <= MAX_DEPTH + 1);
        assert!(!sample.to_string().contains("\\u0000"));
        // A CSV header with a NUL and more columns than kept.
        let header: Vec<String> = (0..300).map(|i| format!("c{i}\0")).collect();
        let (schema, _) = infer(
            Format::Csv,
            format!("{}\n", header.join(",")).as_bytes(),
            100,
        );
        let columns = schema.unwrap()["columns"].as_array().unwrap().clone();
        assert_eq!(columns.len(), MAX_COLUMNS);
        assert!(!columns[0]["name"].as_str().unwrap().contains('\0'));
    }

    #[test]
    fn empty_chunks_do_not_split_records() {
        let mut inference = Inference::new(Format::Csv);
        for chunk in [&b"a,b\n1,"[..], b"", b"2\n3,4\n"] {
            inference.push(chunk);
        }
        assert_eq!(inference.finish().0.unwrap()["row_count"], 2);
    }

    #[test]
    fn other_formats_and_garbage_infer_nothing() {
        assert_eq!(infer(Format::Other, b"a,b\n1,2\n", 3), (None, None));
        assert_eq!(infer(Format::JsonLines, b"{not json}\n", 3), (None, None));
        assert_eq!(format_of("text/csv; charset=utf-8"), Format::Csv);
        assert_eq!(format_of("application/x-ndjson"), Format::JsonLines);
        assert_eq!(format_of("application/octet-stream"), Format::Other);
    }
}
