//! Human descriptions of the DO error codes the node reports.

/// Describes an HRESULT for a person reading a terminal.
pub(crate) fn describe(code: u32) -> String {
    let text = match code {
        0x8019_0000..=0x8019_FFFF => return format!("the origin answered HTTP {}", code & 0xFFFF),
        0x8007_2EE2 => "the origin timed out",
        0x8007_2EE5 => "the URL is not valid",
        0x8007_2EFD => "cannot connect to the origin",
        0x8007_2EFE => "the connection to the origin failed",
        0x8007_2F7C => "the origin's redirect was refused (too many, or https to http)",
        0x8007_0057 => "invalid argument (a custom header?)",
        0x8000_000C => "the origin's file changed while it was being downloaded",
        0x80D0_2002 => "no progress within the no-progress timeout",
        0x80D0_2017 => {
            "a content id cannot be checked for byte ranges alone (the whole file's hashes are needed)"
        }
        0x80D0_201A => "the origin did not say how long the file is",
        0x80D0_5001 => "the origin sent a different number of bytes than asked for",
        0x80D0_5010 => "invalid byte range (empty, or past the end of the file)",
        0x80D0_5011 => "the origin does not support byte ranges",
        0x80D0_5012 => "byte ranges overlap",
        0x80D0_6802 => "internal error of the node",
        0x80D0_6806 => "integrity error: the file does not hash to the expected content id",
        0xC0D0_001C => "no space left on the device",
        0xC0D0_0011 => "the output file exists (use --force to replace it)",
        0xC0D0_0000..=0xC0D0_FFFF => {
            let errno = (code & 0xFFFF) as i32;
            return format!(
                "local file error: {}",
                std::io::Error::from_raw_os_error(errno)
            );
        }
        _ => "error",
    };
    text.to_owned()
}
