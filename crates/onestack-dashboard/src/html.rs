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

const PROJECT_NAV: &[(&str, &str)] = &[
    ("/project/overview", "Overview"),
    ("/project/instances", "Instances"),
    ("/project/images", "Images"),
    ("/project/key_pairs", "Key pairs"),
    ("/project/volumes", "Volumes"),
    ("/project/networks", "Networks"),
    ("/project/routers", "Routers"),
    ("/project/floating_ips", "Floating IPs"),
    ("/project/security_groups", "Security groups"),
];

const ADMIN_NAV: &[(&str, &str)] = &[
    ("/admin/hypervisors", "Hypervisors"),
    ("/admin/instances", "All instances"),
    ("/admin/projects", "Projects"),
    ("/admin/users", "Users"),
    ("/admin/flavors", "Flavors"),
    ("/admin/usage", "Usage"),
];

fn links(items: &[(&str, &str)]) -> String {
    items
        .iter()
        .map(|(href, label)| format!("<a href=\"{href}\">{label}</a>"))
        .collect()
}

/// A whole page: the navigation (for a signed-in session) and `body`.
pub fn page(title: &str, session: Option<&Session>, body: &str) -> String {
    let nav = session
        .map(|s| {
            let admin = if s.is_admin() {
                format!("<span class=\"navhead\">Admin</span>{}", links(ADMIN_NAV))
            } else {
                String::new()
            };
            let projects: String = s
                .projects
                .iter()
                .map(|(id, name)| {
                    let sel = if *id == s.project_id { " selected" } else { "" };
                    format!(
                        "<option value=\"{}\"{sel}>{}</option>",
                        escape(id),
                        escape(name)
                    )
                })
                .collect();
            format!(
                "<header><a class=\"brand\" href=\"/project/overview\">OneStack</a>\
                 <form method=\"post\" action=\"/switch\" class=\"switch\">{}\
                 <label>Project <select name=\"project\">{projects}</select></label>\
                 <button type=\"submit\">Switch</button></form>\
                 <span class=\"who\">{}</span>\
                 <form method=\"post\" action=\"/logout\" class=\"logout\">{}\
                 <button type=\"submit\">Sign out</button></form></header>\
                 <nav><span class=\"navhead\">Project</span>{}{admin}</nav>",
                csrf_field(s),
                escape(&s.user),
                csrf_field(s),
                links(PROJECT_NAV),
            )
        })
        .unwrap_or_default();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · OneStack</title><link rel=\"stylesheet\" href=\"/static/onestack.css\">\
         <script src=\"/static/onestack.js\" defer></script></head>\
         <body>{nav}<main>{body}</main></body></html>",
        escape(title)
    )
}

/// The hidden CSRF field every form of a session carries.
pub fn csrf_field(s: &Session) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(&s.csrf)
    )
}

/// A one-time notice: an error (role=alert) or a confirmation.
pub fn notice(text: &str, ok: bool) -> String {
    if ok {
        format!("<p class=\"ok\" role=\"status\">{}</p>", escape(text))
    } else {
        format!("<p class=\"error\" role=\"alert\">{}</p>", escape(text))
    }
}

/// A POST form to `action` with the CSRF field; `inner` holds its inputs and buttons.
pub fn post_form(s: &Session, id: &str, action: &str, class: &str, inner: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" id=\"{}\" class=\"{class}\">{}{inner}</form>",
        escape(action),
        escape(id),
        csrf_field(s)
    )
}

/// A one-button POST form (delete, start, …).
pub fn button_form(s: &Session, action: &str, label: &str, class: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\">{}<button type=\"submit\" class=\"{class}\">{}</button></form>",
        escape(action),
        csrf_field(s),
        escape(label)
    )
}

/// `<option>`s from (value, label) pairs; `selected` marks one.
pub fn options(items: &[(String, String)], selected: &str) -> String {
    items
        .iter()
        .map(|(v, l)| {
            let sel = if v == selected { " selected" } else { "" };
            format!(
                "<option value=\"{}\"{sel}>{}</option>",
                escape(v),
                escape(l)
            )
        })
        .collect()
}

/// A table with a header row; cells are HTML already (escape what goes in). `empty` shows when
/// there are no rows. Wrapped so that wide tables scroll on a phone instead of the page.
pub fn table(headers: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    let head: String = headers.iter().map(|h| format!("<th>{h}</th>")).collect();
    let body: String = if rows.is_empty() {
        format!(
            "<tr><td colspan=\"{}\" class=\"empty\">{}</td></tr>",
            headers.len().max(1),
            escape(empty)
        )
    } else {
        rows.iter()
            .map(|r| {
                let cells: String = r.iter().map(|c| format!("<td>{c}</td>")).collect();
                format!("<tr>{cells}</tr>")
            })
            .collect()
    };
    format!("<div class=\"scroll\"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
}

/// A usage-against-quota chart: an SVG ring (presentation attributes only; the CSP allows no
/// inline style) with the figures under it. `limit` < 0 means unlimited.
pub fn quota_chart(label: &str, used: i64, limit: i64, unit: &str) -> String {
    let circumference = 251.327_f64; // 2π·40
    let frac = if limit > 0 {
        (used as f64 / limit as f64).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let filled = frac * circumference;
    let class = if frac >= 0.9 {
        "full"
    } else if frac >= 0.7 {
        "high"
    } else {
        "low"
    };
    let of = if limit < 0 {
        "unlimited".to_string()
    } else {
        format!("{limit}{unit}")
    };
    format!(
        "<figure class=\"chart\" data-quota=\"{}\"><svg viewBox=\"0 0 100 100\" width=\"110\" height=\"110\" role=\"img\" aria-label=\"{}: {used} of {}\">\
         <circle cx=\"50\" cy=\"50\" r=\"40\" fill=\"none\" stroke=\"#e3e8ef\" stroke-width=\"12\"/>\
         <circle class=\"{class}\" cx=\"50\" cy=\"50\" r=\"40\" fill=\"none\" stroke-width=\"12\" \
         stroke-dasharray=\"{filled:.1} {circumference:.1}\" transform=\"rotate(-90 50 50)\"/>\
         <text x=\"50\" y=\"56\" text-anchor=\"middle\" font-size=\"18\">{used}</text></svg>\
         <figcaption><strong>{}</strong><br><span class=\"used\">{used}{unit}</span> of <span class=\"limit\">{}</span></figcaption></figure>",
        escape(label),
        escape(label),
        escape(&of),
        escape(label),
        escape(&of),
    )
}

/// A bar chart of usage over time (inline SVG, no script): one bar per bucket, its height the
/// figure, each bar's exact value in its tooltip and the whole series in the figure's data.
pub fn usage_chart(label: &str, unit: &str, bars: &[(String, f64)]) -> String {
    let (w, h, pad) = (320.0_f64, 120.0_f64, 18.0_f64);
    let max = bars.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max);
    let n = bars.len().max(1) as f64;
    let slot = (w - pad) / n;
    let mut rects = String::new();
    for (i, (when, v)) in bars.iter().enumerate() {
        let bh = if max > 0.0 { v / max * (h - pad) } else { 0.0 };
        let x = pad + i as f64 * slot + slot * 0.1;
        let y = h - pad - bh;
        rects.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" data-value=\"{v:.6}\"><title>{}: {v:.2}{}</title></rect>",
            (slot * 0.8).max(0.5),
            escape(when),
            escape(unit),
        ));
    }
    let first = bars.first().map(|(t, _)| t.as_str()).unwrap_or("");
    let last = bars.last().map(|(t, _)| t.as_str()).unwrap_or("");
    let total: f64 = bars.iter().map(|(_, v)| v).sum();
    format!(
        "<figure class=\"usage-chart\" data-usage=\"{}\" data-total=\"{total:.6}\">\
         <svg viewBox=\"0 0 {w} {h}\" width=\"100%\" height=\"{h}\" role=\"img\" aria-label=\"{}: {total:.2}{} in all\">\
         <line x1=\"{pad}\" y1=\"{y0}\" x2=\"{w}\" y2=\"{y0}\" stroke=\"#c5ced8\"/>\
         <text x=\"0\" y=\"10\" font-size=\"9\">{max:.1}</text>\
         <text x=\"0\" y=\"{y0}\" font-size=\"9\">0</text>{rects}\
         <text x=\"{pad}\" y=\"{h}\" font-size=\"9\">{}</text>\
         <text x=\"{w}\" y=\"{h}\" font-size=\"9\" text-anchor=\"end\">{}</text></svg>\
         <figcaption><strong>{}</strong> <span class=\"total\">{total:.2}{}</span></figcaption></figure>",
        escape(label),
        escape(label),
        escape(unit),
        escape(first),
        escape(last),
        escape(label),
        escape(unit),
        y0 = h - pad,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_charts_scale_to_the_largest_bar_and_escape_labels() {
        let c = usage_chart(
            "<b>p</b>",
            " h",
            &[("d1".into(), 1.0), ("d2".into(), 4.0), ("d3".into(), 0.0)],
        );
        assert!(c.contains("&lt;b&gt;p&lt;/b&gt;") && !c.contains("<b>"));
        assert!(c.contains("data-total=\"5.000000\""));
        // The tallest bar fills the plot (120 - 18 = 102), the empty one has no height.
        assert!(c.contains("height=\"102.0\" data-value=\"4.000000\""));
        assert!(c.contains("height=\"0.0\" data-value=\"0.000000\""));
        assert_eq!(c.matches("<rect").count(), 3);
    }

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape("<script>alert(\"x\")</script> & 'y'"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;y&#x27;"
        );
    }

    #[test]
    fn quota_rings_colour_by_how_full_they_are() {
        assert!(quota_chart("vCPUs", 1, 20, "").contains("class=\"low\""));
        assert!(quota_chart("vCPUs", 15, 20, "").contains("class=\"high\""));
        assert!(quota_chart("vCPUs", 20, 20, "").contains("class=\"full\""));
        assert!(quota_chart("<b>", 0, -1, "").contains("unlimited"));
        assert!(!quota_chart("<b>", 0, -1, "").contains("<b>"));
    }

    #[test]
    fn empty_tables_say_so() {
        let t = table(&["A", "B"], &[], "No <things>.");
        assert!(t.contains("colspan=\"2\"") && t.contains("No &lt;things&gt;."));
    }
}
