//! One way for every program to print an error with its causes.

use std::error::Error;

/// An error and its causes on one line, `a: b: c`, leaving out a cause
/// whose text the line already ends with: many error types print their
/// source inside their own message, and a chain printer would repeat it.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped {
        message: String,
        source: std::io::Error,
    }

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.message)
        }
    }

    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.source)
        }
    }

    fn not_found() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")
    }

    #[test]
    fn each_cause_appears_once() {
        let quiet = Wrapped {
            message: "cannot read ca.crt".into(),
            source: not_found(),
        };
        assert_eq!(error_chain(&quiet), "cannot read ca.crt: no such file");
        // A message that already carries its source is not repeated.
        let loud = Wrapped {
            message: "cannot read ca.crt: no such file".into(),
            source: not_found(),
        };
        assert_eq!(error_chain(&loud), "cannot read ca.crt: no such file");
    }
}
