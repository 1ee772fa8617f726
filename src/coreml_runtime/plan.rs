//! `MLComputePlan` (macOS 14.4+) summarised: per op of an ML program, the device Core ML
//! prefers, the devices that could run it and its estimated share of the model's cost,
//! reduced to ops per preferred device, cost per device and the ops that leave the
//! Neural Engine. Both `verify --runtime coreml` and the bench report (from the harness's
//! raw op list) summarise with [`summarize`].

use serde::{Deserialize, Serialize};

use crate::bench::{ComputePlan, Device, DeviceCounts, PlanOp};

/// One op as the compute plan describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanOpRecord {
    /// The op's first output (MIL ops have no name of their own).
    pub output: String,
    pub operator: String,
    /// `preferredComputeDevice`; unknown when Core ML had no usage for the op.
    pub preferred: Device,
    /// `supportedComputeDevices`, when Core ML gave a usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported: Option<Vec<Device>>,
    /// `estimatedCostOfMLProgramOperation.weight`: the op's share of the model's cost
    /// (0..1), when Core ML could estimate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

/// Estimated cost share per preferred device; sums to the share of ops with an estimate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CostShare {
    pub cpu: f64,
    pub gpu: f64,
    pub ane: f64,
    pub unknown: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanSummary {
    pub op_count: u32,
    pub ops_by_device: DeviceCounts,
    /// Only when Core ML estimated a cost for at least one op.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_by_device: Option<CostShare>,
    /// Only for settings that allow the Neural Engine: the ops Core ML prefers elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_not_on_ane: Option<Vec<PlanOp>>,
}

/// `const` ops only hold weights and cost nothing to run; counted they would drown the
/// ops that matter (a ViT-B has about as many consts as real ops).
fn counts(op: &PlanOpRecord) -> bool {
    op.operator != "const"
}

pub fn summarize(ops: &[PlanOpRecord], allows_ane: bool) -> PlanSummary {
    let mut by_device = DeviceCounts {
        cpu: 0,
        gpu: 0,
        ane: 0,
        unknown: 0,
    };
    let mut cost = CostShare::default();
    let mut any_cost = false;
    let mut off_ane = Vec::new();
    let mut op_count = 0u32;
    for op in ops.iter().filter(|op| counts(op)) {
        op_count += 1;
        let (n, c) = match op.preferred {
            Device::Cpu => (&mut by_device.cpu, &mut cost.cpu),
            Device::Gpu => (&mut by_device.gpu, &mut cost.gpu),
            Device::Ane => (&mut by_device.ane, &mut cost.ane),
            Device::Unknown => (&mut by_device.unknown, &mut cost.unknown),
        };
        *n += 1;
        if let Some(w) = op.cost.filter(|w| w.is_finite()) {
            *c += w;
            any_cost = true;
        }
        if allows_ane && op.preferred != Device::Ane {
            off_ane.push(PlanOp {
                output: op.output.clone(),
                operator: op.operator.clone(),
                device: op.preferred,
                supported: op.supported.clone(),
            });
        }
    }
    PlanSummary {
        op_count,
        ops_by_device: by_device,
        cost_by_device: any_cost.then_some(cost),
        ops_not_on_ane: allows_ane.then_some(off_ane),
    }
}

impl PlanSummary {
    /// The bench report's (schema v1) form, which has no costs.
    pub fn to_report(&self) -> ComputePlan {
        ComputePlan {
            op_count: self.op_count,
            ops_by_device: self.ops_by_device,
            ops_not_on_ane: self.ops_not_on_ane.clone(),
        }
    }

    /// `cpu 2, gpu 0, ane 409, unknown 1` plus cost shares when known.
    pub fn one_line(&self) -> String {
        let d = &self.ops_by_device;
        let mut s = format!(
            "{} ops: cpu {}, gpu {}, ane {}, unknown {}",
            self.op_count, d.cpu, d.gpu, d.ane, d.unknown
        );
        if let Some(c) = &self.cost_by_device {
            s.push_str(&format!(
                "; est. cost cpu {:.1}%, gpu {:.1}%, ane {:.1}%",
                c.cpu * 100.0,
                c.gpu * 100.0,
                c.ane * 100.0
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(output: &str, operator: &str, preferred: Device, cost: Option<f64>) -> PlanOpRecord {
        PlanOpRecord {
            output: output.into(),
            operator: operator.into(),
            preferred,
            supported: Some(vec![Device::Cpu, Device::Gpu]),
            cost,
        }
    }

    #[test]
    fn counts_per_device_skip_consts_and_list_ops_off_the_neural_engine() {
        let ops = [
            op("w", "const", Device::Cpu, None),
            op("image__scaled__", "mul", Device::Cpu, Some(0.01)),
            op("blocks_0_attn", "matmul", Device::Ane, Some(0.9)),
            op("logits", "linear", Device::Gpu, Some(0.09)),
        ];
        let s = summarize(&ops, true);
        assert_eq!(s.op_count, 3);
        assert_eq!(
            (
                s.ops_by_device.cpu,
                s.ops_by_device.gpu,
                s.ops_by_device.ane
            ),
            (1, 1, 1)
        );
        let off: Vec<_> = s
            .ops_not_on_ane
            .as_ref()
            .unwrap()
            .iter()
            .map(|o| o.output.as_str())
            .collect();
        assert_eq!(off, ["image__scaled__", "logits"]);
        let c = s.cost_by_device.unwrap();
        assert!((c.ane - 0.9).abs() < 1e-12 && (c.cpu - 0.01).abs() < 1e-12);
        assert!(s.one_line().contains("ane 1"), "{}", s.one_line());
        // The report form keeps the counts and the list.
        assert_eq!(s.to_report().ops_not_on_ane.unwrap().len(), 2);
    }

    #[test]
    fn settings_without_the_neural_engine_list_nothing_and_costs_may_be_absent() {
        let ops = [op("x", "add", Device::Cpu, None)];
        let s = summarize(&ops, false);
        assert_eq!(s.ops_not_on_ane, None);
        assert_eq!(s.cost_by_device, None);
        assert!(!s.one_line().contains("cost"));
    }
}
