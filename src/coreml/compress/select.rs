//! Which weights get compressed: the size threshold and the shape each method needs.

use super::{CompressError, CompressOptions, Method};

/// A weight that may be compressed: its checkpoint name and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub shape: Vec<usize>,
}

impl Candidate {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Why a candidate's shape does not fit the method (`None`: it fits).
pub(super) fn shape_misfit(c: &Candidate, opts: &CompressOptions) -> Option<String> {
    if c.shape.len() < 2 {
        return Some("rank below 2".into());
    }
    match (opts.method, opts.group_size) {
        (Method::Int4, _) if c.shape[1] % opts.block() != 0 => Some(format!(
            "its input axis ({}) is not a multiple of the block size {}",
            c.shape[1],
            opts.block()
        )),
        (Method::Palette(_), Some(g)) if c.shape[0] % g != 0 => Some(format!(
            "its output channels ({}) are not a multiple of the group size {g}",
            c.shape[0]
        )),
        _ => None,
    }
}

/// Which candidates get compressed.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// In the order given.
    pub chosen: Vec<Candidate>,
    /// Large enough, but the shape does not fit the method (kept uncompressed): name and
    /// reason.
    pub skipped: Vec<(String, String)>,
}

/// Applies the selection rule; an error when nothing qualifies, naming the largest
/// candidates and the threshold.
pub fn select(cands: &[Candidate], opts: &CompressOptions) -> Result<Selection, CompressError> {
    let mut sel = Selection::default();
    for c in cands {
        if c.numel() <= opts.min_elements {
            continue;
        }
        match shape_misfit(c, opts) {
            None => sel.chosen.push(c.clone()),
            Some(why) => sel.skipped.push((c.name.clone(), why)),
        }
    }
    if sel.chosen.is_empty() {
        let mut by_size: Vec<&Candidate> = cands.iter().collect();
        by_size.sort_by(|a, b| b.numel().cmp(&a.numel()).then(a.name.cmp(&b.name)));
        let largest = by_size
            .iter()
            .take(5)
            .map(|c| {
                let why = if c.numel() <= opts.min_elements {
                    String::new()
                } else {
                    shape_misfit(c, opts)
                        .map(|w| format!(", skipped: {w}"))
                        .unwrap_or_default()
                };
                format!("{} {:?} ({} elements{why})", c.name, c.shape, c.numel())
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(CompressError::Nothing {
            threshold: opts.min_elements,
            extra: match (opts.method, opts.group_size) {
                (Method::Int4, _) => format!(", input axis a multiple of {}", opts.block()),
                (_, Some(g)) => format!(", output channels a multiple of {g}"),
                _ => String::new(),
            },
            largest: if largest.is_empty() {
                "none (the model has no such weights)".into()
            } else {
                largest
            },
        });
    }
    Ok(sel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands() -> Vec<Candidate> {
        vec![
            Candidate {
                name: "patch_embed.weight".into(),
                shape: vec![48, 3, 8, 8],
            },
            Candidate {
                name: "blocks.0.mlp.fc1.weight".into(),
                shape: vec![192, 48],
            },
            Candidate {
                name: "blocks.0.mlp.fc2.weight".into(),
                shape: vec![48, 192],
            },
            Candidate {
                name: "head.weight".into(),
                shape: vec![5, 48],
            },
        ]
    }

    #[test]
    fn selection_rule() {
        let mut o = CompressOptions::new(Method::Int8);
        let s = select(&cands(), &o).unwrap();
        // 9216 elements each; the head's 240 are below the threshold.
        assert_eq!(s.chosen.len(), 3);
        o.min_elements = 0;
        assert_eq!(select(&cands(), &o).unwrap().chosen.len(), 4);
        o.method = Method::Int4;
        let s = select(&cands(), &o).unwrap();
        assert_eq!(
            s.chosen.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["blocks.0.mlp.fc2.weight"]
        );
        assert_eq!(s.skipped.len(), 3);
        o.min_elements = 100_000;
        let e = select(&cands(), &o).unwrap_err().to_string();
        assert!(
            e.contains("100000") && e.contains("patch_embed.weight [48, 3, 8, 8] (9216 elements)"),
            "{e}"
        );
    }
}
