//! Page frame and escaping. Every string that came from a user or an API goes through `escape`.

use crate::session::Session;

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// Served as `/static/onestack.css` (the CSP allows no inline style).
pub const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1d2733}\
header{display:flex;flex-wrap:wrap;gap:1em;align-items:center;padding:.6em 1em;background:#1d3557;color:#fff}\
header a{color:#fff}header form{margin-left:auto}main{padding:1em;max-width:72em}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.4em;border-bottom:1px solid #ddd}\
.card{display:grid;gap:.6em;max-width:22em}.error{color:#b00020;font-weight:600}\
@media (max-width:40em){th:nth-child(4),td:nth-child(4){display:none}}";

/// A whole page: the navigation (for a signed-in session) and `body`.
pub fn page(title: &str, session: Option<&Session>, body: &str) -> String {
    let nav = session
        .map(|s| {
            let admin = if s.roles.iter().any(|r| r == "admin") {
                "<a href=\"/admin/hypervisors\">Hypervisors</a>"
            } else {
                ""
            };
            format!(
                "<header><strong>OneStack</strong><a href=\"/project/instances\">Instances</a>{admin}\
                 <span>{} · project {}</span>\
                 <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <button type=\"submit\">Sign out</button></form></header>",
                escape(&s.user),
                escape(&s.project),
                escape(&s.csrf)
            )
        })
        .unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · OneStack</title><link rel=\"stylesheet\" href=\"/static/onestack.css\"></head><body>{nav}<main>{body}</main></body></html>",
        escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape("<script>alert(\"x\")</script> & 'y'"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;y&#x27;"
        );
    }
}
