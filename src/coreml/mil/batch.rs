//! A flexible batch: the program's inputs take any batch on axis 0 (the model
//! description's enumerated shapes say which). Emitters build the program at batch 1;
//! this pass then marks axis 0 unknown on every value computed from an input, turns the
//! batch entry of those reshapes' `shape` into -1 and makes those slices run to the end
//! of axis 0, so the same operations serve every listed batch. Constants keep batch 1 and
//! broadcast; an emitter must not concatenate a constant with a batched value on another
//! axis (it adds it onto a batched zero instead).

use std::collections::{HashMap, HashSet};

use crate::coreml::proto::mil as pb;

use super::MilError;

fn unknown_batch(vt: &mut pb::ValueType) {
    if let Some(pb::value_type::Type::TensorType(t)) = vt.r#type.as_mut() {
        if let Some(d) = t.dimensions.first_mut() {
            d.dimension = Some(pb::dimension::Dimension::Unknown(
                pb::dimension::UnknownDimension { variadic: false },
            ));
        }
    }
}

fn bound_names(op: &pb::Operation, param: &str) -> Vec<String> {
    op.inputs
        .get(param)
        .map(|a| {
            a.arguments
                .iter()
                .filter_map(|b| match &b.binding {
                    Some(pb::argument::binding::Binding::Name(n)) => Some(n.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The immediate tensor of a `const` op's `val`.
fn const_tensor(op: &mut pb::Operation) -> Option<&mut pb::TensorValue> {
    match op.attributes.get_mut("val")?.value.as_mut()? {
        pb::value::Value::ImmediateValue(iv) => match iv.value.as_mut()? {
            pb::value::immediate_value::Value::Tensor(t) => Some(t),
            _ => None,
        },
        _ => None,
    }
}

/// Rewrites the first element of the `const` named `name` with `edit`.
fn edit_first(
    ops: &mut [pb::Operation],
    producer: &HashMap<String, usize>,
    name: &str,
    op_name: &str,
    edit: impl FnOnce(&mut pb::tensor_value::Value) -> bool,
) -> Result<(), MilError> {
    let err = |msg: &str| MilError::Shape {
        op: op_name.into(),
        kind: "flexible batch",
        msg: format!("`{name}`: {msg}"),
    };
    let i = *producer.get(name).ok_or_else(|| err("not defined"))?;
    if ops[i].r#type != "const" {
        return Err(err("is not a constant"));
    }
    let t = const_tensor(&mut ops[i]).ok_or_else(|| err("is not an immediate tensor"))?;
    let v = t.value.as_mut().ok_or_else(|| err("is empty"))?;
    if edit(v) {
        Ok(())
    } else {
        Err(err("its batch entry cannot be made flexible"))
    }
}

/// Makes axis 0 of the program's inputs, and of everything computed from them, flexible.
pub fn make_batch_flexible(program: &mut pb::Program) -> Result<(), MilError> {
    let Some(f) = program.functions.get_mut("main") else {
        return Ok(());
    };
    let mut batched: HashSet<String> = HashSet::new();
    for nv in &mut f.inputs {
        batched.insert(nv.name.clone());
        if let Some(t) = nv.r#type.as_mut() {
            unknown_batch(t);
        }
    }
    for block in f.block_specializations.values_mut() {
        let producer: HashMap<String, usize> = block
            .operations
            .iter()
            .enumerate()
            .flat_map(|(i, op)| op.outputs.iter().map(move |o| (o.name.clone(), i)))
            .collect();
        for i in 0..block.operations.len() {
            let op = &block.operations[i];
            let from_input = op
                .inputs
                .values()
                .flat_map(|a| &a.arguments)
                .any(|b| matches!(&b.binding, Some(pb::argument::binding::Binding::Name(n)) if batched.contains(n)));
            if !from_input {
                continue;
            }
            let kind = op.r#type.clone();
            let op_name = op
                .outputs
                .first()
                .map(|o| o.name.clone())
                .unwrap_or_default();
            let batched_x = bound_names(op, "x").iter().any(|n| batched.contains(n));
            if kind == "reshape" && batched_x {
                for s in bound_names(op, "shape") {
                    edit_first(
                        &mut block.operations,
                        &producer,
                        &s,
                        &op_name,
                        |v| match v {
                            pb::tensor_value::Value::Ints(r) if r.values.first() == Some(&1) => {
                                r.values[0] = -1;
                                true
                            }
                            _ => false,
                        },
                    )?;
                }
            }
            if kind == "slice_by_index" && batched_x {
                for s in bound_names(&block.operations[i], "end_mask") {
                    edit_first(
                        &mut block.operations,
                        &producer,
                        &s,
                        &op_name,
                        |v| match v {
                            pb::tensor_value::Value::Bools(r) if !r.values.is_empty() => {
                                r.values[0] = true;
                                true
                            }
                            _ => false,
                        },
                    )?;
                }
            }
            let op = &mut block.operations[i];
            for o in &mut op.outputs {
                batched.insert(o.name.clone());
                if let Some(t) = o.r#type.as_mut() {
                    unknown_batch(t);
                }
            }
        }
    }
    Ok(())
}
