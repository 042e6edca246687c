//! Command-line flags, parsed the way Go's `flag` package does (`-flag value`, `-flag=value`,
//! `--flag`), since containerd passes them in that form (SPEC §1.2).

/// What the invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Spawn the daemon and print its address.
    Start,
    /// Clean up after a dead shim and print a DeleteResponse.
    Delete,
    /// Run the daemon (no action word).
    Serve,
    /// `-v`
    Version,
    /// `-info`
    Info,
}

/// The parsed flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    /// `-namespace`
    pub namespace: String,
    /// `-id`
    pub id: String,
    /// `-address`: containerd's gRPC socket (input to the socket hash).
    pub address: String,
    /// `-publish-binary` (ignored, as in the Go shim)
    pub publish_binary: String,
    /// `-bundle`
    pub bundle: String,
    /// `-socket`: serve on this path instead of the inherited fd 3.
    pub socket: String,
    /// `-debug`
    pub debug: bool,
}

/// Parses `args` (without argv\[0\]).
pub fn parse(args: &[String]) -> Result<(Flags, Action), String> {
    let mut f = Flags::default();
    let mut action = None;
    let mut version = false;
    let mut info = false;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let Some(name) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            action = Some(match arg.as_str() {
                "start" => Action::Start,
                "delete" => Action::Delete,
                other => return Err(format!("unknown action {other:?}")),
            });
            break;
        };
        let (name, inline) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (name, None),
        };
        match name {
            "debug" | "v" | "version" | "info" => {
                let on = inline.is_none_or(|v| v == "true" || v == "1");
                match name {
                    "debug" => f.debug = on,
                    "info" => info = on,
                    _ => version = on,
                }
                continue;
            }
            _ => {}
        }
        let value = match inline {
            Some(v) => v,
            None => {
                let v = args.get(i).cloned().ok_or_else(|| format!("flag needs an argument: -{name}"))?;
                i += 1;
                v
            }
        };
        match name {
            "namespace" => f.namespace = value,
            "id" => f.id = value,
            "address" => f.address = value,
            "publish-binary" => f.publish_binary = value,
            "bundle" => f.bundle = value,
            "socket" => f.socket = value,
            "debug-socket" => {}
            other => return Err(format!("flag provided but not defined: -{other}")),
        }
    }
    let action = if version {
        Action::Version
    } else if info {
        Action::Info
    } else {
        action.unwrap_or(Action::Serve)
    };
    Ok((f, action))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn containerd_start_line() {
        let (f, a) = parse(&s(&[
            "-namespace",
            "default",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "c1",
            "-debug",
            "start",
        ]))
        .unwrap();
        assert_eq!(a, Action::Start);
        assert_eq!(f.namespace, "default");
        assert_eq!(f.id, "c1");
        assert!(f.debug);
    }

    #[test]
    fn forms() {
        let (f, a) = parse(&s(&["--namespace=n", "-id=x", "-bundle", "/b", "delete"])).unwrap();
        assert_eq!((f.namespace.as_str(), f.id.as_str(), f.bundle.as_str()), ("n", "x", "/b"));
        assert_eq!(a, Action::Delete);
        assert_eq!(parse(&s(&["-v"])).unwrap().1, Action::Version);
        assert_eq!(parse(&s(&["-info"])).unwrap().1, Action::Info);
        assert_eq!(parse(&s(&["-namespace", "n"])).unwrap().1, Action::Serve);
        assert!(parse(&s(&["-bogus", "1"])).is_err());
        assert!(parse(&s(&["-id"])).is_err());
        assert!(parse(&s(&["frobnicate"])).is_err());
    }
}
