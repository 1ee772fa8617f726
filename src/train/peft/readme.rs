//! The README of a PEFT folder: the Python lines that load it, for this base and class.

use crate::config::{MlpKind, ModelConfig, SourceFamily};
use crate::convert::torch_names::{Flavour, Wrapper};

use super::super::adapters::AdapterConfig;
use super::export::{Layout, CHECKED_TF4, CHECKED_TF5, CHECKED_TIMM};

/// How Python names the base: a Hub id as is, a local folder as a path.
fn base_ref(cfg: &AdapterConfig) -> String {
    format!("{:?}", cfg.base_model_source)
}

fn timm_ref(cfg: &AdapterConfig) -> String {
    let src = &cfg.base_model_source;
    if std::path::Path::new(src).exists() || src.starts_with('/') || src.starts_with('.') {
        format!("{:?}", format!("local-dir:{src}"))
    } else {
        format!("{:?}", format!("hf-hub:{src}"))
    }
}

fn transformers_lines(cfg: &AdapterConfig, base: &ModelConfig, layout: &Layout) -> String {
    let k = cfg.classes.len();
    let labels = cfg
        .classes
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{i}: {c:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    match layout.wrapper {
        Wrapper::Classifier => format!(
            "import torch\nfrom transformers import AutoModelForImageClassification\nfrom peft import PeftModel\n\n\
             base = AutoModelForImageClassification.from_pretrained(\n    {src}, num_labels={k}, ignore_mismatched_sizes=True,\n    id2label={{{labels}}},\n)\n\
             model = PeftModel.from_pretrained(base, \"adapters/{folder}\").eval()\n\
             with torch.no_grad():\n    logits = model(pixel_values=pixels).logits  # [N, {k}]\n",
            src = base_ref(cfg),
            folder = layout.folder,
        ),
        Wrapper::Backbone => {
            let extra = if base.provenance.family == SourceFamily::HfVit {
                // ViTModel adds a randomly initialised pooler unless told not to.
                ", add_pooling_layer=False"
            } else {
                ""
            };
            format!(
                "import torch\nfrom transformers import AutoModel\nfrom peft import PeftModel\n\n\
                 base = AutoModel.from_pretrained({src}{extra})\n\
                 model = PeftModel.from_pretrained(base, \"adapters/{folder}\").eval()\n\
                 with torch.no_grad():\n    features = model(pixel_values=pixels).last_hidden_state\n",
                src = base_ref(cfg),
                folder = layout.folder,
            )
        }
    }
}

fn timm_lines(cfg: &AdapterConfig, base: &ModelConfig, layout: &Layout) -> String {
    let k = cfg.classes.len();
    let swiglu = if base.mlp == MlpKind::SwigluPacked {
        // timm's config.json cannot name these classes: the user passes them.
        ",\n    mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU"
    } else {
        ""
    };
    format!(
        "import timm, torch\nfrom peft import PeftModel\n\n\
         base = timm.create_model(\n    {src}, pretrained=True, num_classes={k}{swiglu},\n)\n\
         model = PeftModel.from_pretrained(base, \"adapters/{folder}\").eval()\n\
         with torch.no_grad():\n    logits = model(pixels)  # [N, {k}]\n",
        src = timm_ref(cfg),
        folder = layout.folder,
    )
}

pub fn text(cfg: &AdapterConfig, base: &ModelConfig, layout: &Layout) -> String {
    let (lines, checked, what) = match layout.flavour {
        Flavour::Timm => (timm_lines(cfg, base, layout), CHECKED_TIMM, "timm"),
        Flavour::Transformers5 => (
            transformers_lines(cfg, base, layout),
            CHECKED_TF5,
            "transformers 5.x",
        ),
        Flavour::Transformers4 => (
            transformers_lines(cfg, base, layout),
            CHECKED_TF4,
            "transformers 4.x",
        ),
    };
    let target = match layout.wrapper {
        Wrapper::Classifier if layout.flavour != Flavour::Timm => {
            "the library's image classifier over the base (LoRA and the trained head)"
        }
        Wrapper::Backbone if layout.flavour != Flavour::Timm => {
            "the base backbone (LoRA and trained norms; the head is in the `-classifier` folder when one was trained)"
        }
        _ => "the timm model with the trained head",
    };
    let dinov2 = matches!(
        base.provenance.family,
        SourceFamily::HfDinov2 | SourceFamily::HfDinov2Registers
    ) && layout.wrapper == Wrapper::Classifier;
    let note = if dinov2 {
        "\nDINOv2's classifier reads the class token concatenated with the mean of the patch \
         tokens. A head trained here on the class token alone is written with zeros over the \
         mean half, which gives the same logits.\n"
    } else {
        ""
    };
    format!(
        "# PEFT LoRA adapter ({what} module names)\n\n\
         Written by `pipeline train` for {target}. `pixels` are normalised images\n\
         `[N, {c}, {s}, {s}]` (mean {mean:?}, std {std:?}).\n\n\
         ```python\n{lines}```\n{note}\n\
         Checked with {checked} (the project's `tests/peft_interop.rs` loads it like this and\n\
         compares the outputs with the merged model's to 1e-4).\n",
        c = base.in_channels,
        s = base.image_size,
        mean = cfg.mean,
        std = cfg.std,
    )
}
