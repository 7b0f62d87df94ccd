//! A `multipart/form-data` body (RFC 7578) as Breakpad/Crashpad servers take it: text
//! fields, then the minidump as a file part named `upload_file_minidump`.

/// A form being written; [`Form::finish`] gives its Content-Type and body.
pub struct Form {
    boundary: String,
    body: Vec<u8>,
}

/// A part name or file name as a quoted-string: no quote, backslash or line break.
fn quoted(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '"' | '\\' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect()
}

impl Form {
    /// `boundary` must not occur in any part (see [`boundary_for`]).
    pub fn new(boundary: String, capacity: usize) -> Form {
        Form {
            boundary,
            body: Vec::with_capacity(capacity),
        }
    }

    fn open(&mut self, disposition: &str, content_type: Option<&str>) {
        self.body.extend_from_slice(b"--");
        self.body.extend_from_slice(self.boundary.as_bytes());
        self.body
            .extend_from_slice(format!("\r\nContent-Disposition: {disposition}\r\n").as_bytes());
        if let Some(content_type) = content_type {
            self.body
                .extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
        }
        self.body.extend_from_slice(b"\r\n");
    }

    pub fn field(&mut self, name: &str, value: &str) {
        self.open(&format!("form-data; name=\"{}\"", quoted(name)), None);
        self.body.extend_from_slice(value.as_bytes());
        self.body.extend_from_slice(b"\r\n");
    }

    pub fn file(&mut self, name: &str, filename: &str, bytes: &[u8]) {
        let disposition = format!(
            "form-data; name=\"{}\"; filename=\"{}\"",
            quoted(name),
            quoted(filename)
        );
        self.open(&disposition, Some("application/octet-stream"));
        self.body.extend_from_slice(bytes);
        self.body.extend_from_slice(b"\r\n");
    }

    /// The Content-Type header's value and the body.
    pub fn finish(mut self) -> (String, Vec<u8>) {
        self.body.extend_from_slice(b"--");
        self.body.extend_from_slice(self.boundary.as_bytes());
        self.body.extend_from_slice(b"--\r\n");
        (
            format!("multipart/form-data; boundary={}", self.boundary),
            self.body,
        )
    }
}

/// A boundary that occurs in none of `parts`: `random` hex, re-drawn on the (2^-128)
/// chance that a part holds it.
pub fn boundary_for(parts: &[&[u8]], mut random: impl FnMut() -> String) -> String {
    loop {
        let boundary = format!("----vm-launcher-{}", random());
        let needle = boundary.as_bytes();
        if !parts
            .iter()
            .any(|p| p.windows(needle.len()).any(|w| w == needle))
        {
            return boundary;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_has_fields_then_the_file_and_a_closing_boundary() {
        let mut form = Form::new("XyZ".into(), 0);
        form.field("prod", "vm_tools");
        form.field("we\"ird\r\n", "a\nb");
        form.file("upload_file_minidump", "a.dmp", b"MDMP\r\n--XyZ-not");
        let (content_type, body) = form.finish();
        assert_eq!(content_type, "multipart/form-data; boundary=XyZ");
        assert_eq!(
            String::from_utf8_lossy(&body),
            "--XyZ\r\nContent-Disposition: form-data; name=\"prod\"\r\n\r\nvm_tools\r\n\
             --XyZ\r\nContent-Disposition: form-data; name=\"we_ird__\"\r\n\r\na\nb\r\n\
             --XyZ\r\nContent-Disposition: form-data; name=\"upload_file_minidump\"; \
             filename=\"a.dmp\"\r\nContent-Type: application/octet-stream\r\n\r\n\
             MDMP\r\n--XyZ-not\r\n--XyZ--\r\n"
        );
    }

    #[test]
    fn boundary_for_redraws_when_a_part_holds_it() {
        let mut draws = ["a", "a", "b"].into_iter().map(String::from);
        let dump = b"xx----vm-launcher-ayy";
        assert_eq!(
            boundary_for(&[dump], || draws.next().unwrap()),
            "----vm-launcher-b"
        );
    }
}
