//! Safe names and relative paths.
//!
//! Tenant, category and module id become directory names on every client
//! (`<install-dir>/<tenant>/<category>/<id>/`), and manifest paths become file paths
//! under them, so both are validated wherever they enter: on publish, and again on
//! every manifest decoded from the store or the network.

/// Longest tenant, category or id, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest version string, in bytes.
pub const MAX_VERSION_LEN: usize = 64;
/// Longest description, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 4096;
/// Most words (program and arguments) of a post-install command.
pub const MAX_HOOK_ARGS: usize = 32;
/// Longest word of a post-install command, in bytes.
pub const MAX_HOOK_ARG_LEN: usize = 1024;
/// Longest relative file path in a manifest, in bytes.
pub const MAX_PATH_LEN: usize = 1024;
/// Longest single component of a relative path, in bytes.
pub const MAX_COMPONENT_LEN: usize = 255;

/// A name, version, description or path that arbor refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes long; the limit is {limit}")]
    TooLong {
        field: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("{field} {value:?} contains {what}")]
    BadChar {
        field: &'static str,
        value: String,
        what: &'static str,
    },
    #[error("{field} {value:?} is not allowed: {why}")]
    Reserved {
        field: &'static str,
        value: String,
        why: &'static str,
    },
}

fn shown(value: &str) -> String {
    value.chars().take(80).collect()
}

fn check_len(field: &'static str, value: &str, limit: usize) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { field });
    }
    if value.len() > limit {
        return Err(NameError::TooLong {
            field,
            len: value.len(),
            limit,
        });
    }
    Ok(())
}

fn check_no_control(field: &'static str, value: &str) -> Result<(), NameError> {
    if value.chars().any(char::is_control) {
        return Err(NameError::BadChar {
            field,
            value: shown(value),
            what: "a control character",
        });
    }
    Ok(())
}

/// Checks a tenant, category or module id: one directory level, no tricks.
///
/// Allowed: ASCII letters, digits, `.`, `_`, `-`, `+`, `@`; not starting with `.` or `-`.
/// This is deliberately narrower than what file systems accept, so that a name means
/// the same directory on every client platform.
pub fn check_name(field: &'static str, value: &str) -> Result<(), NameError> {
    check_len(field, value, MAX_NAME_LEN)?;
    if value.contains(['/', '\\']) {
        return Err(NameError::BadChar {
            field,
            value: shown(value),
            what: "a path separator",
        });
    }
    check_no_control(field, value)?;
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '@')))
    {
        return Err(NameError::BadChar {
            field,
            value: shown(value),
            what: if c == ' ' {
                "a space"
            } else {
                "a character other than letters, digits and . _ - + @"
            },
        });
    }
    if value.starts_with('.') || value.starts_with('-') {
        return Err(NameError::Reserved {
            field,
            value: shown(value),
            why: "names may not start with '.' or '-'",
        });
    }
    Ok(())
}

/// Checks a version string: non-empty, bounded, printable, no path separators.
pub fn check_version(value: &str) -> Result<(), NameError> {
    check_len("version", value, MAX_VERSION_LEN)?;
    check_no_control("version", value)?;
    if value.contains(['/', '\\']) {
        return Err(NameError::BadChar {
            field: "version",
            value: shown(value),
            what: "a path separator",
        });
    }
    if value.trim() != value {
        return Err(NameError::Reserved {
            field: "version",
            value: shown(value),
            why: "leading or trailing white space",
        });
    }
    Ok(())
}

/// Checks an optional description: bounded, no control characters but newline and tab.
pub fn check_description(value: &str) -> Result<(), NameError> {
    if value.len() > MAX_DESCRIPTION_LEN {
        return Err(NameError::TooLong {
            field: "description",
            len: value.len(),
            limit: MAX_DESCRIPTION_LEN,
        });
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(NameError::BadChar {
            field: "description",
            value: shown(value),
            what: "a control character",
        });
    }
    Ok(())
}

/// Checks a post-install command: 1 to [`MAX_HOOK_ARGS`] words, the program first and
/// not empty, each word at most [`MAX_HOOK_ARG_LEN`] bytes without control characters
/// (NUL included). The program is a name looked up in `PATH`, an absolute path, or a
/// path inside the module, which must then be a safe relative path.
pub fn check_post_install(argv: &[String]) -> Result<(), NameError> {
    const FIELD: &str = "post-install command";
    let Some(program) = argv.first() else {
        return Err(NameError::Empty { field: FIELD });
    };
    if argv.len() > MAX_HOOK_ARGS {
        return Err(NameError::TooLong {
            field: FIELD,
            len: argv.len(),
            limit: MAX_HOOK_ARGS,
        });
    }
    check_len(FIELD, program, MAX_HOOK_ARG_LEN)?;
    for word in argv {
        if word.len() > MAX_HOOK_ARG_LEN {
            return Err(NameError::TooLong {
                field: FIELD,
                len: word.len(),
                limit: MAX_HOOK_ARG_LEN,
            });
        }
        check_no_control(FIELD, word)?;
    }
    if program.contains('/') && !program.starts_with('/') {
        check_rel_path(program.strip_prefix("./").unwrap_or(program))?;
    }
    Ok(())
}

/// Checks the fields that name a module version: tenant, category, id, version and the
/// optional description.
pub fn check_module(
    tenant: &str,
    category: &str,
    id: &str,
    version: &str,
    description: Option<&str>,
) -> Result<(), NameError> {
    check_name("tenant", tenant)?;
    check_name("category", category)?;
    check_name("id", id)?;
    check_version(version)?;
    description.map_or(Ok(()), check_description)
}

/// Checks a manifest file path: relative, `/`-separated, every component a plain name.
///
/// Refused: empty paths, absolute paths, `.` and `..` components, empty components
/// (`a//b`, trailing `/`), backslashes, NUL and other control characters.
pub fn check_rel_path(value: &str) -> Result<(), NameError> {
    const FIELD: &str = "file path";
    check_len(FIELD, value, MAX_PATH_LEN)?;
    check_no_control(FIELD, value)?;
    if value.starts_with('/') {
        return Err(NameError::Reserved {
            field: FIELD,
            value: shown(value),
            why: "absolute paths are not allowed",
        });
    }
    if value.contains('\\') {
        return Err(NameError::BadChar {
            field: FIELD,
            value: shown(value),
            what: "a backslash",
        });
    }
    for part in value.split('/') {
        let why = match part {
            "" => "empty path component",
            "." | ".." => "'.' and '..' components are not allowed",
            p if p.len() > MAX_COMPONENT_LEN => "a component is longer than 255 bytes",
            _ => continue,
        };
        return Err(NameError::Reserved {
            field: FIELD,
            value: shown(value),
            why,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in [
            "acme",
            "Acme-Corp",
            "plugins",
            "report.viewer",
            "x_1+2@b",
            "7zip",
        ] {
            assert_eq!(check_name("id", n), Ok(()), "{n}");
        }
    }

    #[test]
    fn refuses_unsafe_names() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for n in [
            "", "..", ".", "a/b", "a\\b", "a\0b", "a\nb", ".hidden", "-rf", "a b", "ä", &long,
        ] {
            assert!(check_name("id", n).is_err(), "{n:?} accepted");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(check_version("1.2.3-beta+7"), Ok(()));
        assert_eq!(check_version("2026 R1"), Ok(()));
        for v in ["", " 1", "1/2", "1\t", &"9".repeat(65)] {
            assert!(check_version(v).is_err(), "{v:?} accepted");
        }
    }

    #[test]
    fn relative_paths() {
        for p in [
            "a",
            "a/b.txt",
            "dir/sub/file name.bin",
            "..a/b..",
            ".config/x",
        ] {
            assert_eq!(check_rel_path(p), Ok(()), "{p}");
        }
        for p in [
            "",
            "/etc/passwd",
            "a/../b",
            "..",
            "./a",
            "a//b",
            "a/",
            "a\\b",
            "a\0",
            "a\u{7f}",
        ] {
            assert!(check_rel_path(p).is_err(), "{p:?} accepted");
        }
    }
}
