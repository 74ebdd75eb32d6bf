//! The lower bound on distribution time (Kumar & Ross, extended to sites behind WAN links):
//! every term is a cut argument, so no schedule can finish sooner. A run that beats it is a
//! simulator bug.

use serde::Serialize;

use crate::scenario::Mode;

/// A site as the bound sees it (capacities in bytes/s; `f64::INFINITY` when unlimited).
#[derive(Debug, Clone)]
pub struct SiteCaps {
    /// WAN capacity into the site.
    pub wan_down: f64,
    /// WAN capacity out of the site.
    pub wan_up: f64,
    /// Upload capacity of each node of the site that must finish.
    pub up: Vec<f64>,
    /// Download capacity and arrival time (s) of each node of the site that must finish.
    pub down: Vec<(f64, f64)>,
}

/// The bound and the term that binds.
#[derive(Debug, Clone, Serialize)]
pub struct Bound {
    /// The bound, seconds.
    pub t_min_s: f64,
    /// Which term binds.
    pub binding: String,
    /// Every term, seconds.
    pub terms: Vec<(String, f64)>,
    /// The least the origin must send, bytes.
    pub min_origin_bytes: f64,
}

/// The bound for `files` (start offset after a node's arrival in s, bytes) to every node of
/// `sites`, from an origin of `origin_up` bytes/s. The node terms take each node's arrival plus
/// the first file's start as its arrival (see [`SiteCaps::down`]).
pub fn lower_bound(mode: Mode, files: &[(f64, f64)], origin_up: f64, sites: &[SiteCaps]) -> Bound {
    let f: f64 = files.iter().map(|&(_, size)| size).sum();
    let first = files
        .iter()
        .map(|&(start, _)| start)
        .fold(f64::MAX, f64::min);
    let files: Vec<(f64, f64)> = files.iter().map(|&(s, size)| (s - first, size)).collect();
    let n: usize = sites.iter().map(|s| s.down.len()).sum();
    let active: Vec<&SiteCaps> = sites.iter().filter(|s| !s.down.is_empty()).collect();
    let k = active.len() as f64;
    let sum_up: f64 = sites.iter().flat_map(|s| &s.up).sum();
    let mut terms: Vec<(String, f64)> = vec![("F/u_origin".into(), f / origin_up)];
    let slowest = sites
        .iter()
        .flat_map(|s| &s.down)
        .map(|&(d, a)| a + f / d)
        .fold(0.0, f64::max);
    terms.push(("a_i+F/d_i".into(), slowest));
    // A file cannot arrive before it starts: a_i + s_f + F_f/d_i for each file f.
    if files.len() > 1 {
        let latest = sites
            .iter()
            .flat_map(|s| &s.down)
            .flat_map(|&(d, a)| files.iter().map(move |&(start, size)| a + start + size / d))
            .fold(0.0, f64::max);
        terms.push(("a_i+s_f+F_f/d_i".into(), latest));
    }
    let min_origin = match mode {
        Mode::Http => {
            terms.push(("N·F/u_origin".into(), n as f64 * f / origin_up));
            for (i, s) in active.iter().enumerate() {
                terms.push((
                    format!("n_{i}·F/D_{i}"),
                    s.down.len() as f64 * f / s.wan_down,
                ));
            }
            n as f64 * f
        }
        Mode::Lan | Mode::Group | Mode::Internet => {
            terms.push((
                "N·F/(u_origin+Σu_i)".into(),
                n as f64 * f / (origin_up + sum_up),
            ));
            for (i, s) in active.iter().enumerate() {
                let site_up: f64 = s.up.iter().sum();
                terms.push((format!("F/D_{i}"), f / s.wan_down));
                terms.push((
                    format!("n_{i}·F/(D_{i}+Σu_{i})"),
                    s.down.len() as f64 * f / (s.wan_down + site_up),
                ));
            }
            if mode == Mode::Lan {
                terms.push(("K·F/u_origin".into(), k * f / origin_up));
                k * f
            } else {
                if active.len() > 1 {
                    let supply: f64 = sites
                        .iter()
                        .map(|s| s.wan_up.min(s.up.iter().sum::<f64>()))
                        .sum();
                    terms.push((
                        "K·F/(u_origin+Σ_k min(U_k,Σu))".into(),
                        k * f / (origin_up + supply),
                    ));
                }
                f
            }
        }
    };
    let (binding, t_min_s) = terms.iter().filter(|(_, t)| t.is_finite()).fold(
        (String::new(), 0.0),
        |best, (name, t)| {
            if *t > best.1 {
                (name.clone(), *t)
            } else {
                best
            }
        },
    );
    Bound {
        t_min_s,
        binding,
        terms,
        min_origin_bytes: min_origin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBIT: f64 = 1e6 / 8.0;
    const GIB: f64 = 1_073_741_824.0;

    fn site(nodes: usize, up: f64, down: f64, wan: f64) -> SiteCaps {
        SiteCaps {
            wan_down: wan,
            wan_up: wan,
            up: vec![up; nodes],
            down: vec![(down, 0.0); nodes],
        }
    }

    #[test]
    fn flash_crowd_on_one_lan_is_download_bound() {
        // 1,000 nodes at 100 Mbit/s, 1 Gbit/s origin, 1 GiB: 85.9 s, the slowest download.
        let b = lower_bound(
            Mode::Lan,
            &[(0.0, GIB)],
            1000.0 * MBIT,
            &[site(1000, 100.0 * MBIT, 100.0 * MBIT, f64::INFINITY)],
        );
        assert!((b.t_min_s - 85.9).abs() < 0.1, "{b:?}");
        assert_eq!(b.binding, "a_i+F/d_i");
        assert_eq!(b.min_origin_bytes, GIB);
    }

    #[test]
    fn sites_behind_thin_wan_links_are_wan_bound() {
        // 5 sites × 200 nodes, 1 Gbit hosts, 50 Mbit/s WAN: each site imports F at 50 Mbit/s.
        let sites: Vec<SiteCaps> = (0..5)
            .map(|_| site(200, 1000.0 * MBIT, 1000.0 * MBIT, 50.0 * MBIT))
            .collect();
        let b = lower_bound(Mode::Group, &[(0.0, GIB)], 1000.0 * MBIT, &sites);
        assert!((b.t_min_s - 171.8).abs() < 0.1, "{b:?}");
        assert_eq!(b.binding, "F/D_0");
        let lan = lower_bound(Mode::Lan, &[(0.0, GIB)], 1000.0 * MBIT, &sites);
        assert_eq!(lan.min_origin_bytes, 5.0 * GIB);
    }

    #[test]
    fn a_later_file_cannot_arrive_before_it_starts() {
        // Two 100 MB files, the second starting 60 s after the first, at 100 Mbit/s: 68 s.
        let files = [(0.0, 100e6), (60.0, 100e6)];
        let b = lower_bound(
            Mode::Lan,
            &files,
            1000.0 * MBIT,
            &[site(10, 100.0 * MBIT, 100.0 * MBIT, f64::INFINITY)],
        );
        assert_eq!(b.binding, "a_i+s_f+F_f/d_i");
        assert!((b.t_min_s - 68.0).abs() < 1e-9, "{b:?}");
    }

    #[test]
    fn http_only_needs_a_copy_per_node_from_the_origin() {
        let b = lower_bound(
            Mode::Http,
            &[(0.0, GIB)],
            1000.0 * MBIT,
            &[site(100, 100.0 * MBIT, 100.0 * MBIT, f64::INFINITY)],
        );
        assert_eq!(b.binding, "N·F/u_origin");
        assert!((b.t_min_s - 100.0 * GIB / (1000.0 * MBIT)).abs() < 1e-6);
    }
}
