//! Hand-written SVG line charts of a run: no plotting crate, opens in any browser.

use crate::sim::{Report, WorkSample};
use std::fmt::Write;

const W: f64 = 900.0;
const H: f64 = 360.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 45.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

struct Chart {
    svg: String,
    x_max: f64,
    y_max: f64,
    legend: usize,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Chart {
    fn new(title: &str, y_label: &str, x_max: f64, y_max: f64) -> Self {
        let x_max = if x_max > 0.0 { x_max } else { 1.0 };
        let y_max = if y_max > 0.0 { y_max } else { 1.0 };
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text>
"#,
            esc(title)
        );
        let mut c = Self {
            svg,
            x_max,
            y_max,
            legend: 0,
        };
        c.axes(y_label);
        c
    }

    fn x(&self, t: f64) -> f64 {
        LEFT + (t / self.x_max).clamp(0.0, 1.0) * (W - LEFT - RIGHT)
    }
    fn y(&self, v: f64) -> f64 {
        H - BOTTOM - (v / self.y_max).clamp(0.0, 1.0) * (H - TOP - BOTTOM)
    }

    fn axes(&mut self, y_label: &str) {
        let (x0, x1, y0, y1) = (
            self.x(0.0),
            self.x(self.x_max),
            self.y(0.0),
            self.y(self.y_max),
        );
        let _ = writeln!(
            self.svg,
            r##"<path d="M{x0},{y1} L{x0},{y0} L{x1},{y0}" stroke="#333" fill="none"/>"##
        );
        for i in 0..=5 {
            let t = self.x_max * i as f64 / 5.0;
            let v = self.y_max * i as f64 / 5.0;
            let (xt, yv) = (self.x(t), self.y(v));
            let _ = writeln!(
                self.svg,
                r##"<text x="{xt}" y="{}" text-anchor="middle">{t:.0}</text><line x1="{x0}" x2="{x1}" y1="{yv}" y2="{yv}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                y0 + 16.0,
                x0 - 6.0,
                yv + 4.0,
                if self.y_max <= 1.0 {
                    format!("{v:.1}")
                } else {
                    format!("{v:.0}")
                }
            );
        }
        let _ = writeln!(
            self.svg,
            r#"<text x="{}" y="{}" text-anchor="middle">time (s)</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"#,
            (x0 + x1) / 2.0,
            H - 8.0,
            (y0 + y1) / 2.0,
            (y0 + y1) / 2.0,
            esc(y_label)
        );
    }

    fn band(&mut self, from: f64, to: f64, color: &str) {
        let (a, b) = (self.x(from), self.x(to));
        let _ = writeln!(
            self.svg,
            r#"<rect x="{a}" y="{TOP}" width="{}" height="{}" fill="{color}" opacity="0.25"/>"#,
            (b - a).max(1.0),
            H - TOP - BOTTOM
        );
    }

    fn marker(&mut self, t: f64, label: &str, color: &str) {
        let x = self.x(t);
        let _ = writeln!(
            self.svg,
            r#"<line x1="{x}" x2="{x}" y1="{TOP}" y2="{}" stroke="{color}" stroke-dasharray="3,3"><title>{}</title></line>"#,
            H - BOTTOM,
            esc(label)
        );
    }

    fn line(&mut self, name: &str, points: &[(f64, f64)], color: &str, dashed: bool) {
        if points.is_empty() {
            return;
        }
        let d: Vec<String> = points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", self.x(*t), self.y(*v)))
            .collect();
        let _ = writeln!(
            self.svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.8"{}/>"#,
            d.join(" "),
            if dashed {
                r#" stroke-dasharray="6,3""#
            } else {
                ""
            }
        );
        let ly = TOP + 10.0 + 18.0 * self.legend as f64;
        let lx = W - RIGHT + 12.0;
        let _ = writeln!(
            self.svg,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"{}/><text x="{}" y="{}">{}</text>"#,
            lx + 22.0,
            if dashed {
                r#" stroke-dasharray="6,3""#
            } else {
                ""
            },
            lx + 28.0,
            ly + 4.0,
            esc(name)
        );
        self.legend += 1;
    }

    fn finish(mut self) -> String {
        self.svg.push_str("</svg>\n");
        self.svg
    }
}

fn x_max(r: &Report) -> f64 {
    r.samples.iter().map(|s| s.t_s).fold(r.duration_s, f64::max)
}

/// Shade hub-down time grey, mark faults red and heals green.
fn decorate(c: &mut Chart, r: &Report) {
    let mut down_from = None;
    for s in &r.samples {
        match (s.hub_up, down_from) {
            (false, None) => down_from = Some(s.t_s),
            (true, Some(f)) => {
                c.band(f, s.t_s, "#999");
                down_from = None;
            }
            _ => {}
        }
    }
    if let (Some(f), Some(last)) = (down_from, r.samples.last()) {
        c.band(f, last.t_s, "#999");
    }
    for e in &r.events {
        if e.action.starts_with("apply") {
            continue;
        }
        let color = if e.heal { "#2ca02c" } else { "#d62728" };
        c.marker(
            e.t_s,
            &format!("{:.1}s {} ({} agents)", e.t_s, e.action, e.agents),
            color,
        );
    }
    c.marker(r.duration_s, "end of timeline: heal all", "#000");
}

/// Agents Ready (as the hub sees them) and reachable (alive, link up, hub up) over time.
pub fn online(r: &Report) -> String {
    let mut c = Chart::new(
        &format!("{} (seed {}): agents online", r.scenario, r.seed),
        "agents",
        x_max(r),
        r.agents as f64,
    );
    decorate(&mut c, r);
    let pts = |f: &dyn Fn(&crate::sim::Sample) -> usize| -> Vec<(f64, f64)> {
        r.samples.iter().map(|s| (s.t_s, f(s) as f64)).collect()
    };
    c.line("reachable", &pts(&|s| s.reachable), "#999", true);
    c.line("Ready (hub view)", &pts(&|s| s.ready), COLORS[0], false);
    c.line("converged", &pts(&|s| s.converged), COLORS[2], false);
    c.finish()
}

/// Per work: share of targeted agents that applied the latest generation, over time. A dip
/// is a new generation going out; the line returns to 1 when every target has applied it.
pub fn convergence(r: &Report) -> String {
    let mut c = Chart::new(
        &format!("{} (seed {}): generation convergence", r.scenario, r.seed),
        "share of targets at latest generation",
        x_max(r),
        1.0,
    );
    decorate(&mut c, r);
    for (i, w) in r.works.keys().enumerate() {
        // Share of targeted clusters that have reached the latest generation, by one count.
        let share = |count: fn(&WorkSample) -> usize| -> Vec<(f64, f64)> {
            r.samples
                .iter()
                .filter_map(|s| {
                    s.works.get(w).map(|ws| {
                        let share = if ws.targeted == 0 {
                            1.0
                        } else {
                            count(ws) as f64 / ws.targeted as f64
                        };
                        (s.t_s, share)
                    })
                })
                .collect()
        };
        let color = COLORS[i % COLORS.len()];
        c.line(
            &format!("{w} applied"),
            &share(|ws| ws.applied),
            color,
            false,
        );
        c.line(
            &format!("{w} delivered"),
            &share(|ws| ws.delivered),
            color,
            true,
        );
    }
    c.finish()
}
