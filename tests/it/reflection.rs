//! The served methods, as any client learns them: through server reflection (v1, and v1alpha for
//! what only it knows), asking for each listed service's file and then for every import by name.

use std::collections::BTreeMap;

use prost::Message as _;
use prost_reflect::{DescriptorPool, MethodDescriptor};
use tonic::transport::Channel;

/// Every method the server serves, as the reflection services describe them.
pub(crate) async fn served_methods(channel: &Channel) -> Vec<MethodDescriptor> {
    let (pool, listed) = reflected_pool(channel).await;
    listed
        .iter()
        .flat_map(|name| {
            pool.get_service_by_name(name)
                .unwrap_or_else(|| panic!("{name} is listed but not described"))
                .methods()
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The descriptors of every listed service, with their imports, and the listed services' names.
pub(crate) async fn reflected_pool(channel: &Channel) -> (DescriptorPool, Vec<String>) {
    use tonic_reflection::pb::{v1, v1alpha};
    let mut files: BTreeMap<String, prost_types::FileDescriptorProto> = BTreeMap::new();
    let add = |files: &mut BTreeMap<String, prost_types::FileDescriptorProto>,
               encoded: Vec<Vec<u8>>| {
        for bytes in encoded {
            let file = prost_types::FileDescriptorProto::decode(bytes.as_slice())
                .expect("reflection serves well-formed file descriptors");
            files.entry(file.name().to_owned()).or_insert(file);
        }
    };

    // v1 first, for the list and every file; then v1alpha, which may know its own service.
    let mut v1_client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let ask_v1 =
        async |client: &mut v1::server_reflection_client::ServerReflectionClient<Channel>,
               request: v1::server_reflection_request::MessageRequest| {
            client
                .server_reflection_info(tokio_stream::iter([v1::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(request),
                }]))
                .await
                .expect("reflection v1 answers")
                .into_inner()
                .message()
                .await
                .map(|r| {
                    r.and_then(|r| r.message_response)
                        .expect("a reflection v1 answer")
                })
        };
    use v1::server_reflection_response::MessageResponse as V1;
    let Ok(V1::ListServicesResponse(list)) = ask_v1(
        &mut v1_client,
        v1::server_reflection_request::MessageRequest::ListServices(String::new()),
    )
    .await
    else {
        panic!("reflection v1 does not list services");
    };
    let mut listed: Vec<String> = list.service.into_iter().map(|s| s.name).collect();

    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let ask_alpha =
        async |client: &mut v1alpha::server_reflection_client::ServerReflectionClient<Channel>,
               request: v1alpha::server_reflection_request::MessageRequest| {
            client
                .server_reflection_info(tokio_stream::iter([v1alpha::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(request),
                }]))
                .await
                .expect("reflection v1alpha answers")
                .into_inner()
                .message()
                .await
                .map(|r| {
                    r.and_then(|r| r.message_response)
                        .expect("a reflection v1alpha answer")
                })
        };
    use v1alpha::server_reflection_response::MessageResponse as Alpha;
    if let Ok(Alpha::ListServicesResponse(list)) = ask_alpha(
        &mut alpha,
        v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
    )
    .await
    {
        listed.extend(list.service.into_iter().map(|s| s.name));
    }
    listed.sort();
    listed.dedup();

    for service in &listed {
        match ask_v1(
            &mut v1_client,
            v1::server_reflection_request::MessageRequest::FileContainingSymbol(service.clone()),
        )
        .await
        {
            Ok(V1::FileDescriptorResponse(found)) => add(&mut files, found.file_descriptor_proto),
            _ => match ask_alpha(
                &mut alpha,
                v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                    service.clone(),
                ),
            )
            .await
            {
                Ok(Alpha::FileDescriptorResponse(found)) => {
                    add(&mut files, found.file_descriptor_proto)
                }
                other => panic!("reflection does not describe {service}: {other:?}"),
            },
        }
    }
    // Reflection answers one file per question; its imports are asked for by name, as any
    // client resolving a descriptor does.
    loop {
        let missing: Vec<String> = files
            .values()
            .flat_map(|f| f.dependency.iter())
            .filter(|d| !files.contains_key(*d))
            .cloned()
            .collect();
        if missing.is_empty() {
            break;
        }
        for name in missing {
            match ask_v1(
                &mut v1_client,
                v1::server_reflection_request::MessageRequest::FileByFilename(name.clone()),
            )
            .await
            {
                Ok(V1::FileDescriptorResponse(found)) => {
                    add(&mut files, found.file_descriptor_proto)
                }
                other => panic!("reflection does not serve {name}, an import: {other:?}"),
            }
        }
    }
    let mut pool = DescriptorPool::new();
    pool.add_file_descriptor_protos(files.into_values())
        .expect("the reflected files form a complete descriptor pool");
    (pool, listed)
}
