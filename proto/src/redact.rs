//! Hiding the access token in text that leaves its owner (logs, console output, errors):
//! every `maitred.token=VALUE` becomes `maitred.token=<redacted>`. One rule for every
//! program: the value ends at white space, a quote or a comma, as the kernel command line,
//! QEMU's `key=value,…` options and shell quoting end it.

use crate::cmdline::KEY_TOKEN;

const REDACTED: &[u8] = b"<redacted>";

fn ends_value(c: u8) -> bool {
    c.is_ascii_whitespace() || matches!(c, b'"' | b'\'' | b',')
}

/// `content` with every token value redacted, or None if it holds no `maitred.token=`.
pub fn redact_token_bytes(content: &[u8]) -> Option<Vec<u8>> {
    let key = format!("{KEY_TOKEN}=");
    let key = key.as_bytes();
    let find = |from: usize| {
        content[from..]
            .windows(key.len())
            .position(|w| w == key)
            .map(|at| from + at)
    };
    let mut at = find(0)?;
    let mut out = Vec::with_capacity(content.len());
    let mut copied = 0;
    loop {
        let value = at + key.len();
        let end = content[value..]
            .iter()
            .position(|c| ends_value(*c))
            .map_or(content.len(), |n| value + n);
        out.extend_from_slice(&content[copied..value]);
        out.extend_from_slice(REDACTED);
        copied = end;
        match find(end) {
            Some(next) => at = next,
            None => break,
        }
    }
    out.extend_from_slice(&content[copied..]);
    Some(out)
}

/// `text` with every token value redacted.
pub fn redact_token(text: &str) -> String {
    match redact_token_bytes(text.as_bytes()) {
        // Only ASCII was cut out and put in, at ASCII boundaries: still UTF-8.
        Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn redact_token_hides_every_value_and_keeps_the_rest() {
        let text = format!(
            "a maitred.token={HEX} b \"maitred.token=x,y\" 'maitred.token=z' maitred.token={HEX}"
        );
        assert_eq!(
            redact_token(&text),
            "a maitred.token=<redacted> b \"maitred.token=<redacted>,y\" \
             'maitred.token=<redacted>' maitred.token=<redacted>"
        );
        assert_eq!(redact_token("no secret"), "no secret");
        assert_eq!(redact_token_bytes(b"no secret"), None);
        assert_eq!(
            redact_token_bytes(b"maitred.token=\xff\xfe tail").unwrap(),
            b"maitred.token=<redacted> tail"
        );
        assert_eq!(redact_token("maitred.token="), "maitred.token=<redacted>");
    }
}
