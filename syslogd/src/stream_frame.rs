//! Cuts a syslog byte stream (a SOCK_STREAM client of the stream socket) into messages, the
//! two framings rsyslog's imuxsock/imtcp and syslog-ng accept (RFC 6587):
//!
//! - octet counting: `LEN SP MSG`, chosen when a frame starts with a digit;
//! - non-transparent: the message ends at `\n` or NUL (what `logger -T` and most stream
//!   clients send), chosen otherwise.
//!
//! The framing is decided per frame, so a client may mix them. A message longer than
//! `max` is cut to `max` and marked truncated, and the rest of it is skipped: a client can
//! cost a reader at most `max` bytes of memory, whatever it sends. A bad count (no space
//! within 10 digits) ends in a newline-framed message of what was there, so garbage turns
//! into visible records, never a stuck stream.

/// One message, and whether it was cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub message: Vec<u8>,
    pub truncated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames.
    Start,
    /// Reading a count: the digits so far.
    Count(u64, usize),
    /// An octet-counted message: bytes still to take.
    Counted(u64),
    /// A newline-framed message.
    Line,
}

pub struct Framer {
    max: usize,
    state: State,
    current: Vec<u8>,
    truncated: bool,
}

impl Framer {
    pub fn new(max: usize) -> Framer {
        Framer {
            max: max.max(1),
            state: State::Start,
            current: Vec::new(),
            truncated: false,
        }
    }

    fn keep(&mut self, byte: u8) {
        if self.current.len() < self.max {
            self.current.push(byte);
        } else {
            self.truncated = true;
        }
    }

    fn finish(&mut self, out: &mut Vec<Frame>) {
        out.push(Frame {
            message: std::mem::take(&mut self.current),
            truncated: std::mem::take(&mut self.truncated),
        });
        self.state = State::Start;
    }

    /// Feeds `bytes`; the messages they complete are appended to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Frame>) {
        for &b in bytes {
            match self.state {
                State::Start => match b {
                    b'\n' | b'\r' | 0 => {} // empty lines between frames
                    b'1'..=b'9' => self.state = State::Count(u64::from(b - b'0'), 1),
                    _ => {
                        self.state = State::Line;
                        self.keep(b);
                    }
                },
                State::Count(n, digits) => match b {
                    b' ' if n > 0 => {
                        self.current.clear();
                        self.state = State::Counted(n);
                    }
                    b'0'..=b'9' if digits < 10 => {
                        self.state = State::Count(n * 10 + u64::from(b - b'0'), digits + 1)
                    }
                    _ => {
                        // Not a count after all: what was read so far is text.
                        self.current = n.to_string().into_bytes();
                        self.state = State::Line;
                        if b == b'\n' || b == 0 {
                            self.finish(out);
                        } else {
                            self.keep(b);
                        }
                    }
                },
                State::Counted(left) => {
                    self.keep(b);
                    if left == 1 {
                        self.finish(out);
                    } else {
                        self.state = State::Counted(left - 1);
                    }
                }
                State::Line => {
                    if b == b'\n' || b == 0 {
                        self.finish(out);
                    } else {
                        self.keep(b);
                    }
                }
            }
        }
    }

    /// The client closed: a message without its terminator still counts.
    pub fn end(&mut self, out: &mut Vec<Frame>) {
        match self.state {
            State::Line | State::Counted(_) => self.finish(out),
            State::Count(n, _) => {
                self.current = n.to_string().into_bytes();
                self.finish(out);
            }
            State::Start => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(max: usize, chunks: &[&[u8]]) -> Vec<(String, bool)> {
        let mut f = Framer::new(max);
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut out);
        }
        f.end(&mut out);
        out.into_iter()
            .map(|fr| {
                (
                    String::from_utf8_lossy(&fr.message).into_owned(),
                    fr.truncated,
                )
            })
            .collect()
    }

    fn texts(v: &[(String, bool)]) -> Vec<&str> {
        v.iter().map(|(s, _)| s.as_str()).collect()
    }

    #[test]
    fn push_newline_and_nul_framed() {
        let got = frames(100, &[b"<13>a one\n<13>b tw", b"o\0<13>c\n\n"]);
        assert_eq!(texts(&got), ["<13>a one", "<13>b two", "<13>c"]);
    }

    #[test]
    fn push_octet_counted_keeps_newlines_inside() {
        let got = frames(100, &[b"11 <13>a\nb c d", b"5 <13>x"]);
        assert_eq!(texts(&got), ["<13>a\nb c d", "<13>x"]);
    }

    #[test]
    fn push_mixed_framing_and_split_counts() {
        let got = frames(100, &[b"<13>line\n1", b"0 <13>ten ch<13>next\n"]);
        assert_eq!(texts(&got), ["<13>line", "<13>ten ch", "<13>next"]);
    }

    #[test]
    fn push_over_max_is_cut_and_the_rest_skipped() {
        let long = format!("<13>{}\n<13>after\n", "x".repeat(50));
        let got = frames(10, &[long.as_bytes()]);
        assert_eq!(got[0], ("<13>xxxxxx".to_string(), true));
        assert_eq!(got[1], ("<13>after".to_string(), false));
        let counted = format!("60 {}<13>ok\n", "y".repeat(60));
        let got = frames(10, &[counted.as_bytes()]);
        assert_eq!(got[0], ("y".repeat(10), true));
        assert_eq!(got[1], ("<13>ok".to_string(), false));
    }

    #[test]
    fn push_garbage_count_becomes_text() {
        let got = frames(100, &[b"12345678901234 x\n42abc\n7\n"]);
        assert_eq!(texts(&got), ["12345678901234 x", "42abc", "7"]);
    }

    #[test]
    fn end_flushes_an_unterminated_message() {
        assert_eq!(
            texts(&frames(100, &[b"<13>no newline"])),
            ["<13>no newline"]
        );
        assert_eq!(texts(&frames(100, &[b"20 <13>short"])), ["<13>short"]);
    }
}
