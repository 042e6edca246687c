//! containerd 2.3+'s bootstrap protocol (`containerd.runtime.bootstrap.v1`, SPEC §1.3): `start`
//! reads a `BootstrapParams` proto on stdin and answers with a `BootstrapResult` proto on stdout.

use containerd_shim_protos::bootstrap_api::{BootstrapParams, BootstrapResult};
use protobuf::well_known_types::any::Any;
use protobuf::Message;

/// Decodes `input` as the `BootstrapParams` of instance `id` in `namespace`. As in the Go shim,
/// the identity must match the flags: an old containerd's runtime options `Any` can decode as
/// `BootstrapParams` too. `None` means the input is not bootstrap params.
pub fn parse(input: &[u8], id: &str, namespace: &str) -> Option<BootstrapParams> {
    if input.is_empty() {
        return None;
    }
    BootstrapParams::parse_from_bytes(input).ok().filter(|p| p.instance_id == id && p.namespace == namespace)
}

/// The first extension of type `type_url` (with or without a `host/` prefix).
pub fn extension<'a>(params: &'a BootstrapParams, type_url: &str) -> Option<&'a Any> {
    params.extensions.iter().filter_map(|e| e.value.as_ref()).find(|a| a.type_url.rsplit('/').next() == Some(type_url))
}

/// `BootstrapResult{version: 3, address, protocol: "ttrpc"}` as proto bytes.
pub fn result_bytes(address: &str) -> Vec<u8> {
    let mut r = BootstrapResult::new();
    r.version = 3;
    r.address = address.to_owned();
    r.protocol = "ttrpc".to_owned();
    // Encoding a message of plain fields into a Vec cannot fail.
    r.write_to_bytes().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use protobuf::CodedOutputStream;

    use super::*;

    /// Encodes fields by number, independently of the generated code.
    fn encode(fields: &[(u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut os = CodedOutputStream::vec(&mut out);
        for (n, v) in fields {
            os.write_bytes(*n, v).unwrap_or_default();
        }
        os.write_int32(3, -4).unwrap_or_default(); // log_level DEBUG
        os.flush().unwrap_or_default();
        drop(os);
        out
    }

    #[test]
    fn parses_params_and_checks_identity() {
        let mut any = Any::new();
        any.type_url = "containerd.runc.v1.Options".into();
        any.value = vec![0x3a, 1, b'x'];
        let mut ext = Vec::new();
        let mut os = CodedOutputStream::vec(&mut ext);
        os.write_bytes(1, &any.write_to_bytes().unwrap_or_default()).unwrap_or_default();
        os.flush().unwrap_or_default();
        drop(os);
        let input = encode(&[
            (1, b"c1"),
            (2, b"ns"),
            (4, b"v2.3.0"),
            (6, b"/run/containerd/containerd.sock"),
            (8, &ext),
            (9, b"/run/x"),
        ]);
        let p = parse(&input, "c1", "ns");
        assert_eq!(p.as_ref().map(|p| p.containerd_grpc_address.as_str()), Some("/run/containerd/containerd.sock"));
        assert_eq!(p.as_ref().and_then(|p| p.socket_dir.clone()).as_deref(), Some("/run/x"));
        assert_eq!(p.as_ref().and_then(|p| extension(p, "containerd.runc.v1.Options")), Some(&any));
        assert!(parse(&input, "c2", "ns").is_none(), "another instance");
        assert!(parse(&input, "c1", "other").is_none(), "another namespace");
        // An old containerd's options Any is not bootstrap params for this instance.
        assert!(parse(&any.write_to_bytes().unwrap_or_default(), "c1", "ns").is_none());
    }

    #[test]
    fn rejects_garbage_and_empty() {
        assert!(parse(&[], "", "").is_none());
        assert!(parse(&[0xff, 0xff, 0xff], "", "").is_none());
        assert!(parse(&[0x0a, 10, b'a'], "", "").is_none(), "truncated field");
    }

    #[test]
    fn result_encodes_three_fields() {
        let b = result_bytes("unix:///s");
        assert_eq!(b, [&[0x08, 3, 0x12, 9][..], b"unix:///s", &[0x1a, 5], b"ttrpc"].concat());
    }
}
