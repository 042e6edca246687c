//! containerd 2.3+'s bootstrap protocol (`containerd.runtime.bootstrap.v1`, SPEC §1.3): `start`
//! reads a `BootstrapParams` proto on stdin and answers with a `BootstrapResult` proto on stdout.
//! The messages are not in containerd-shim-protos, so the few fields we use are coded by hand.

use protobuf::well_known_types::any::Any;
use protobuf::{CodedInputStream, CodedOutputStream, Message};

/// The fields of `BootstrapParams` the runc shim uses.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BootstrapParams {
    /// Field 1: the container (or sandbox) id.
    pub instance_id: String,
    /// Field 2: the namespace.
    pub namespace: String,
    /// Field 6: containerd's gRPC address (input to the socket hash).
    pub containerd_grpc_address: String,
    /// Field 8: each `Extension.value` (field 1) Any, e.g. the runc Options.
    pub extensions: Vec<Any>,
    /// Field 9: where to put the socket (empty: the default dir).
    pub socket_dir: String,
}

impl BootstrapParams {
    /// Decodes `input`. `None` when it is empty or not a well-formed `BootstrapParams`.
    pub fn parse(input: &[u8]) -> Option<BootstrapParams> {
        if input.is_empty() {
            return None;
        }
        let mut p = BootstrapParams::default();
        let mut is = CodedInputStream::from_bytes(input);
        while let Some(tag) = is.read_raw_tag_or_eof().ok()? {
            let (field, wire) = (tag >> 3, tag & 7);
            match (field, wire) {
                (1, 2) => p.instance_id = is.read_string().ok()?,
                (2, 2) => p.namespace = is.read_string().ok()?,
                (6, 2) => p.containerd_grpc_address = is.read_string().ok()?,
                (8, 2) => p.extensions.extend(extension_value(&is.read_bytes().ok()?)?),
                (9, 2) => p.socket_dir = is.read_string().ok()?,
                (0, _) => return None,
                _ => protobuf::rt::skip_field_for_tag(tag, &mut is).ok()?,
            }
        }
        Some(p)
    }

    /// The first extension of type `type_url`, if any.
    pub fn extension(&self, type_url: &str) -> Option<&Any> {
        self.extensions.iter().find(|a| a.type_url == type_url || a.type_url.ends_with(&format!("/{type_url}")))
    }
}

/// `Extension { Any value = 1; }`: the Any, or `None` when malformed.
fn extension_value(bytes: &[u8]) -> Option<Option<Any>> {
    let mut is = CodedInputStream::from_bytes(bytes);
    let mut value = None;
    while let Some(tag) = is.read_raw_tag_or_eof().ok()? {
        if tag == (1 << 3 | 2) {
            value = Some(Any::parse_from_bytes(&is.read_bytes().ok()?).ok()?);
        } else {
            protobuf::rt::skip_field_for_tag(tag, &mut is).ok()?;
        }
    }
    Some(value)
}

/// `BootstrapResult{version: 3, address, protocol: "ttrpc"}` as proto bytes.
pub fn result_bytes(address: &str) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut os = CodedOutputStream::vec(&mut out);
        // Writing into a Vec cannot fail.
        let _ = os.write_int32(1, 3);
        let _ = os.write_string(2, address);
        let _ = os.write_string(3, "ttrpc");
        let _ = os.flush();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(fields: &[(u32, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut os = CodedOutputStream::vec(&mut out);
        for (n, v) in fields {
            os.write_bytes(*n, v).unwrap();
        }
        os.write_int32(3, -4).unwrap(); // log_level DEBUG: a negative varint must be skipped
        os.flush().unwrap();
        drop(os);
        out
    }

    #[test]
    fn parses_params_and_skips_unknown_fields() {
        let mut any = Any::new();
        any.type_url = "containerd.runc.v1.Options".into();
        any.value = vec![0x3a, 1, b'x'];
        let mut ext = Vec::new();
        let mut os = CodedOutputStream::vec(&mut ext);
        os.write_bytes(1, &any.write_to_bytes().unwrap()).unwrap();
        os.flush().unwrap();
        drop(os);
        let input = encode(&[
            (1, b"c1"),
            (2, b"ns"),
            (4, b"v2.3.0"),
            (6, b"/run/containerd/containerd.sock"),
            (8, &ext),
            (9, b"/run/x"),
        ]);
        let p = BootstrapParams::parse(&input).unwrap();
        assert_eq!(p.instance_id, "c1");
        assert_eq!(p.namespace, "ns");
        assert_eq!(p.containerd_grpc_address, "/run/containerd/containerd.sock");
        assert_eq!(p.socket_dir, "/run/x");
        assert_eq!(p.extension("containerd.runc.v1.Options"), Some(&any));
    }

    #[test]
    fn rejects_garbage_and_empty() {
        assert_eq!(BootstrapParams::parse(&[]), None);
        assert_eq!(BootstrapParams::parse(&[0xff, 0xff, 0xff]), None);
        // A truncated length-delimited field.
        assert_eq!(BootstrapParams::parse(&[0x0a, 10, b'a']), None);
    }

    #[test]
    fn result_encodes_three_fields() {
        let b = result_bytes("unix:///s");
        assert_eq!(b, [&[0x08, 3, 0x12, 9][..], b"unix:///s", &[0x1a, 5], b"ttrpc"].concat());
    }
}
