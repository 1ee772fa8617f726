//! What a picture is made of: rectangles, polylines, dots and text in pixel
//! coordinates (y grows downwards). The SVG writer and the rasteriser both read this,
//! so the PNG and the SVG carry the same words in the same places.

pub type Colour = [u8; 3];

pub const BLACK: Colour = [0, 0, 0];
pub const TEXT: Colour = [34, 34, 34];
pub const MUTED: Colour = [100, 100, 100];
pub const AXIS: Colour = [60, 60, 60];
pub const GRID: Colour = [225, 225, 225];
pub const WHITE: Colour = [255, 255, 255];

/// Where a text's `x` sits on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextStyle {
    pub size: f32,
    pub bold: bool,
    pub colour: Colour,
    pub anchor: Anchor,
    /// Read bottom to top (a y-axis label).
    pub vertical: bool,
}

impl TextStyle {
    pub fn new(size: f32) -> Self {
        TextStyle {
            size,
            bold: false,
            colour: TEXT,
            anchor: Anchor::Start,
            vertical: false,
        }
    }
    pub fn bold(self) -> Self {
        TextStyle { bold: true, ..self }
    }
    pub fn colour(self, colour: Colour) -> Self {
        TextStyle { colour, ..self }
    }
    pub fn anchor(self, anchor: Anchor) -> Self {
        TextStyle { anchor, ..self }
    }
    pub fn vertical(self) -> Self {
        TextStyle {
            vertical: true,
            ..self
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// Axis-aligned; edges on whole pixels are drawn without blending.
    Rect {
        x: f32,
        y: f32,
        w: f32,
        h: f32,
        fill: Colour,
    },
    Line {
        points: Vec<(f32, f32)>,
        colour: Colour,
        width: f32,
        dashed: bool,
    },
    Dot {
        x: f32,
        y: f32,
        r: f32,
        colour: Colour,
    },
    /// `y` is the baseline (for vertical text, `x` is).
    Text {
        x: f32,
        y: f32,
        text: String,
        style: TextStyle,
    },
}

/// A picture: a white canvas of `width` x `height` pixels and what is drawn on it, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    pub items: Vec<Item>,
}

impl Scene {
    pub fn new(width: u32, height: u32) -> Self {
        Scene {
            width,
            height,
            items: Vec::new(),
        }
    }

    pub fn rect(&mut self, x: f32, y: f32, w: f32, h: f32, fill: Colour) {
        if w > 0.0 && h > 0.0 {
            self.items.push(Item::Rect { x, y, w, h, fill });
        }
    }

    pub fn line(&mut self, points: Vec<(f32, f32)>, colour: Colour, width: f32) {
        self.items.push(Item::Line {
            points,
            colour,
            width,
            dashed: false,
        });
    }

    pub fn dashed(&mut self, points: Vec<(f32, f32)>, colour: Colour, width: f32) {
        self.items.push(Item::Line {
            points,
            colour,
            width,
            dashed: true,
        });
    }

    pub fn dot(&mut self, x: f32, y: f32, r: f32, colour: Colour) {
        self.items.push(Item::Dot { x, y, r, colour });
    }

    pub fn text(&mut self, x: f32, y: f32, text: impl Into<String>, style: TextStyle) {
        self.items.push(Item::Text {
            x,
            y,
            text: text.into(),
            style,
        });
    }

    /// Every text in drawing order (what a reader of the picture sees).
    pub fn texts(&self) -> Vec<&str> {
        self.items
            .iter()
            .filter_map(|i| match i {
                Item::Text { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }
}
