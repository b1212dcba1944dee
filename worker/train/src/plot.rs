//! PNG figures with `plotters`' bitmap backend (no fonts, so no system libraries; the PNG encoder
//! is the small one below): loss curves (log scale, faint grid lines at powers of ten) and
//! spectrograms.

use std::path::Path;

use plotters::prelude::*;

use super::{Result, TrainError};

fn perr(e: impl std::fmt::Display) -> TrainError {
    TrainError::Plot(e.to_string())
}

/// A loss curve: x = step, y = log10(loss). The title goes into no pixel (no fonts); the
/// caller's report names the figure.
pub fn loss_png(path: &Path, _title: &str, points: &[(u64, f64)]) -> Result<()> {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|(_, l)| l.is_finite() && *l > 0.0)
        .map(|(s, l)| (*s as f64, l.log10()))
        .collect();
    let (w, h) = (640u32, 360u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(perr)?;
        if pts.len() < 2 {
            root.present().map_err(perr)?;
            drop(root);
            return write_png(path, w, h, &buf);
        }
        let x1 = pts.iter().map(|p| p.0).fold(1.0, f64::max);
        let y0 = pts
            .iter()
            .map(|p| p.1)
            .fold(f64::INFINITY, f64::min)
            .floor();
        let y1 = pts
            .iter()
            .map(|p| p.1)
            .fold(f64::NEG_INFINITY, f64::max)
            .ceil()
            .max(y0 + 1.0);
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .build_cartesian_2d(0.0..x1, y0..y1)
            .map_err(perr)?;
        let grid = RGBColor(220, 220, 220);
        let mut y = y0;
        while y <= y1 {
            chart
                .draw_series(LineSeries::new([(0.0, y), (x1, y)], grid))
                .map_err(perr)?;
            y += 1.0;
        }
        chart
            .draw_series(LineSeries::new(pts, &BLUE))
            .map_err(perr)?;
        root.present().map_err(perr)?;
    }
    write_png(path, w, h, &buf)
}

/// A spectrogram (`[rows][cols]`, low rows at the bottom) scaled to its own min/max.
pub fn spectrogram_png(path: &Path, rows: usize, cols: usize, values: &[f32]) -> Result<()> {
    let (sx, sy) = (2u32, 4u32);
    let (w, h) = (cols as u32 * sx, rows as u32 * sy);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let lo = values.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = values
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max)
            .max(lo + 1e-6);
        for r in 0..rows {
            for c in 0..cols {
                let v = ((values[r * cols + c] - lo) / (hi - lo)).clamp(0.0, 1.0) as f64;
                let color = RGBColor(
                    (255.0 * v.sqrt()) as u8,
                    (255.0 * v * v) as u8,
                    (110.0 * (1.0 - v) + 40.0 * v) as u8,
                );
                let y = (rows - 1 - r) as i32 * sy as i32;
                let x = c as i32 * sx as i32;
                root.draw(&Rectangle::new(
                    [(x, y), (x + sx as i32, y + sy as i32)],
                    color.filled(),
                ))
                .map_err(perr)?;
            }
        }
        root.present().map_err(perr)?;
    }
    write_png(path, w, h, &buf)
}

/// Writes 8-bit RGB pixels as a PNG (one IDAT, zlib via flate2).
pub fn write_png(path: &Path, w: u32, h: u32, rgb: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut raw = Vec::with_capacity(rgb.len() + h as usize);
    for row in rgb.chunks_exact(w as usize * 3) {
        raw.push(0u8);
        raw.extend_from_slice(row);
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&raw).map_err(|e| super::file_err(path, e))?;
    let idat = z.finish().map_err(|e| super::file_err(path, e))?;
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut c = crc32fast::Hasher::new();
        c.update(kind);
        c.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&c.finalize().to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &idat);
    chunk(b"IEND", &[]);
    std::fs::write(path, out).map_err(|e| super::file_err(path, e))
}
