//! The `vidcascade.v1` gRPC contract shared by the gateway, the text encoder and
//! every video stage.
//!
//! - [`v1`]: messages, clients and servers generated from `proto/vidcascade/v1/*.proto`
//!   (the `.proto` comments are the reference documentation).
//! - [`wire`]: how tensors and videos are encoded into those messages, chunked and
//!   reassembled, and the checks a receiver runs on them.
//! - [`convert`]: the contract's messages to and from the cascade's own types
//!   (`vidcascade-spec`): videos, shapes, sampler settings, requests, and the status code of
//!   each outcome — written once, used by every service and client.
//! - feature `json`: serde impls of every message in the proto3 JSON mapping (the gateway's
//!   HTTP API).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.

pub mod convert;
pub mod wire;

/// Generated messages, clients (`*_client`) and servers (`*_server`) of package
/// `vidcascade.v1`.
pub mod v1 {
    #![allow(missing_docs)]

    tonic::include_proto!("vidcascade.v1");
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/vidcascade.v1.serde.rs"));
}

/// Encoded `google.protobuf.FileDescriptorSet` of every file of `vidcascade.v1`,
/// with source comments, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/vidcascade_descriptor.bin"));

/// Decoding limit stage servers set for `StageRequest`s, which carry a whole
/// conditioning video: 64 MiB, raised knowingly from gRPC's 4 MiB default.
pub const MAX_STAGE_REQUEST_BYTES: usize = 64 << 20;

#[cfg(test)]
mod tests {
    use prost::Message;
    use prost_types::{DescriptorProto, FileDescriptorSet, source_code_info::Location};

    // Field numbers in descriptor.proto, the steps of a source location's path.
    const FILE_MESSAGE: i32 = 4;
    const FILE_ENUM: i32 = 5;
    const FILE_SERVICE: i32 = 6;
    const MESSAGE_FIELD: i32 = 2;
    const MESSAGE_NESTED: i32 = 3;
    const MESSAGE_ENUM: i32 = 4;
    const MESSAGE_ONEOF: i32 = 8;
    const ENUM_VALUE: i32 = 2;
    const SERVICE_METHOD: i32 = 2;

    /// Paths and names of every message, field, real oneof, enum, enum value,
    /// service and rpc of one file.
    fn documentable(file: &prost_types::FileDescriptorProto) -> Vec<(Vec<i32>, String)> {
        fn message(path: Vec<i32>, msg: &DescriptorProto, out: &mut Vec<(Vec<i32>, String)>) {
            // Map fields' entry messages are synthetic: nothing in the source to document.
            if msg.options.as_ref().is_some_and(|o| o.map_entry()) {
                return;
            }
            let name = msg.name().to_owned();
            out.push((path.clone(), name.clone()));
            for (i, field) in msg.field.iter().enumerate() {
                let p = [path.clone(), vec![MESSAGE_FIELD, i as i32]].concat();
                out.push((p, format!("{name}.{}", field.name())));
            }
            for (i, oneof) in msg.oneof_decl.iter().enumerate() {
                // `optional` fields get a synthetic oneof each.
                let synthetic = msg
                    .field
                    .iter()
                    .any(|f| f.oneof_index == Some(i as i32) && f.proto3_optional());
                if !synthetic {
                    let p = [path.clone(), vec![MESSAGE_ONEOF, i as i32]].concat();
                    out.push((p, format!("{name}.{}", oneof.name())));
                }
            }
            for (i, nested) in msg.nested_type.iter().enumerate() {
                message(
                    [path.clone(), vec![MESSAGE_NESTED, i as i32]].concat(),
                    nested,
                    out,
                );
            }
            for (i, e) in msg.enum_type.iter().enumerate() {
                enumeration(
                    [path.clone(), vec![MESSAGE_ENUM, i as i32]].concat(),
                    e,
                    out,
                );
            }
        }
        fn enumeration(
            path: Vec<i32>,
            e: &prost_types::EnumDescriptorProto,
            out: &mut Vec<(Vec<i32>, String)>,
        ) {
            out.push((path.clone(), e.name().to_owned()));
            for (i, value) in e.value.iter().enumerate() {
                let p = [path.clone(), vec![ENUM_VALUE, i as i32]].concat();
                out.push((p, format!("{}.{}", e.name(), value.name())));
            }
        }

        let mut out = Vec::new();
        for (i, msg) in file.message_type.iter().enumerate() {
            message(vec![FILE_MESSAGE, i as i32], msg, &mut out);
        }
        for (i, e) in file.enum_type.iter().enumerate() {
            enumeration(vec![FILE_ENUM, i as i32], e, &mut out);
        }
        for (i, service) in file.service.iter().enumerate() {
            out.push((vec![FILE_SERVICE, i as i32], service.name().to_owned()));
            for (j, method) in service.method.iter().enumerate() {
                let p = vec![FILE_SERVICE, i as i32, SERVICE_METHOD, j as i32];
                out.push((p, format!("{}.{}", service.name(), method.name())));
            }
        }
        out
    }

    #[test]
    fn descriptor_set_holds_the_package() {
        let set = FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).expect("decode");
        let names: Vec<_> = set.file.iter().map(|f| f.name()).collect();
        for file in [
            "vidcascade/v1/common.proto",
            "vidcascade/v1/text_encoder.proto",
            "vidcascade/v1/video_stage.proto",
            "vidcascade/v1/gateway.proto",
        ] {
            assert!(names.contains(&file), "{file} missing from {names:?}");
        }
        assert!(set.file.iter().all(|f| f.package() == "vidcascade.v1"));
        assert!(set.file.iter().all(|f| f.syntax() == "proto3"));
    }

    /// Every item of the contract carries a leading comment, which becomes the doc
    /// comment of the generated Rust item and what reflection clients show.
    #[test]
    fn every_item_is_documented() {
        let set = FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).expect("decode");
        let mut undocumented = Vec::new();
        let mut checked = 0;
        for file in set.file.iter().filter(|f| f.package() == "vidcascade.v1") {
            let locations: &[Location] = file
                .source_code_info
                .as_ref()
                .map_or(&[], |info| &info.location);
            for (path, name) in documentable(file) {
                checked += 1;
                let comment = locations
                    .iter()
                    .find(|l| l.path == path)
                    .map(|l| l.leading_comments().trim());
                match comment {
                    None | Some("") => undocumented.push(format!("{}: {name}", file.name())),
                    // `/// text` in a .proto leaves a stray "/" in the generated docs.
                    Some(c) if c.starts_with('/') => {
                        undocumented.push(format!("{}: {name} (starts with '/')", file.name()))
                    }
                    Some(_) => {}
                }
            }
        }
        assert!(checked > 100, "only {checked} items found");
        assert!(undocumented.is_empty(), "undocumented: {undocumented:#?}");
    }

    /// Enum values carry their enum's prefix and 0 is `*_UNSPECIFIED`.
    #[test]
    fn enum_values_are_prefixed() {
        let set = FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).expect("decode");
        for e in set.file.iter().flat_map(|f| &f.enum_type) {
            // DType -> D_TYPE_, StageKind -> STAGE_KIND_.
            let mut prefix = String::new();
            for (i, c) in e.name().chars().enumerate() {
                if i > 0 && c.is_uppercase() {
                    prefix.push('_');
                }
                prefix.push(c.to_ascii_uppercase());
            }
            prefix.push('_');
            for value in &e.value {
                assert!(value.name().starts_with(&prefix), "{}", value.name());
            }
            let zero = e
                .value
                .iter()
                .find(|v| v.number() == 0)
                .expect("a zero value");
            assert_eq!(zero.name(), format!("{prefix}UNSPECIFIED"));
        }
    }
}
