//! A safe, bounds-checked front for the `gemm` crate's strided `f32` matrix product.
//!
//! The ops of this crate parallelise over images or sequences themselves, so every product here
//! runs on the calling thread (`Parallelism::None`): no pool hand-off for the many small
//! products a U-Net step makes, and no threads spinning while others work.

use candle_core::{Result, bail};

/// A read-only `rows x cols` matrix inside `data`: element `(i, j)` is
/// `data[i * row_stride + j * col_stride]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    /// The elements (the matrix may be a strided view into a larger buffer).
    pub data: &'a [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance between consecutive rows.
    pub row_stride: usize,
    /// Distance between consecutive columns.
    pub col_stride: usize,
}

/// A writable `rows x cols` matrix inside `data`, laid out like [`MatRef`].
#[derive(Debug)]
pub struct MatMut<'a> {
    /// The elements.
    pub data: &'a mut [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance between consecutive rows.
    pub row_stride: usize,
    /// Distance between consecutive columns.
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix with rows `row_stride` apart.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose (a view; nothing moves).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

impl<'a> MatMut<'a> {
    /// A row-major matrix with rows `row_stride` apart.
    pub fn rows(data: &'a mut [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }
}

/// Whether every element of a `rows x cols` view with these strides lies inside `len`.
fn fits(len: usize, rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    let last = (rows - 1)
        .checked_mul(row_stride)
        .zip((cols - 1).checked_mul(col_stride))
        .and_then(|(r, c)| r.checked_add(c));
    matches!(last, Some(last) if last < len && last <= isize::MAX as usize)
}

/// `dst = a * b` (or `dst += a * b` with `accumulate`), on the calling thread.
pub fn matmul(dst: MatMut<'_>, a: MatRef<'_>, b: MatRef<'_>, accumulate: bool) -> Result<()> {
    let (m, n, k) = (dst.rows, dst.cols, a.cols);
    if a.rows != m || b.rows != k || b.cols != n {
        bail!(
            "matmul: {}x{} = {}x{} * {}x{} does not chain",
            dst.rows,
            dst.cols,
            a.rows,
            a.cols,
            b.rows,
            b.cols
        );
    }
    let views = [
        (dst.data.len(), m, n, dst.row_stride, dst.col_stride),
        (a.data.len(), m, k, a.row_stride, a.col_stride),
        (b.data.len(), k, n, b.row_stride, b.col_stride),
    ];
    if views
        .iter()
        .any(|&(len, r, c, rs, cs)| !fits(len, r, c, rs, cs))
    {
        bail!("matmul: a matrix view runs past its buffer");
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    super::count_flops(2 * m * n * k);
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst.data[i * dst.row_stride + j * dst.col_stride] = 0.0;
                }
            }
        }
        return Ok(());
    }
    // SAFETY: `fits` checked that every element each view addresses lies inside its slice (and
    // that the offsets fit an isize), `dst` is borrowed mutably so it aliases neither input, and
    // with `read_dst == false` gemm overwrites dst without reading it (alpha is then ignored).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.col_stride as isize,
            dst.row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: MatRef<'_>, b: MatRef<'_>) -> Vec<f32> {
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                for p in 0..a.cols {
                    out[i * b.cols + j] += a.data[i * a.row_stride + p * a.col_stride]
                        * b.data[p * b.row_stride + j * b.col_stride];
                }
            }
        }
        out
    }

    #[test]
    fn strided_products_match_the_naive_loop() -> Result<()> {
        let a: Vec<f32> = (0..7 * 9).map(|i| (i as f32 * 0.1).cos()).collect();
        let b: Vec<f32> = (0..9 * 5).map(|i| (i as f32 * 0.3).sin()).collect();
        // a: 7x4 view with rows 9 apart; b: the transpose of a 5x4 view with rows 9 apart.
        let av = MatRef::rows(&a, 7, 4, 9);
        let bv = MatRef::rows(&b, 5, 4, 9).t();
        let mut out = vec![1.0; 7 * 5];
        matmul(MatMut::rows(&mut out, 7, 5, 5), av, bv, false)?;
        let want = naive(av, bv);
        for (got, want) in out.iter().zip(&want) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        matmul(MatMut::rows(&mut out, 7, 5, 5), av, bv, true)?;
        for (got, want) in out.iter().zip(&want) {
            assert!((got - 2.0 * want).abs() < 1e-5, "{got} vs {want}");
        }
        Ok(())
    }

    #[test]
    fn views_past_their_buffer_are_refused() {
        let a = vec![0.0; 10];
        let mut out = vec![0.0; 4];
        let too_long = MatRef::rows(&a, 3, 4, 4); // needs 12 elements
        let b = MatRef::rows(&a, 4, 1, 1);
        assert!(matmul(MatMut::rows(&mut out, 3, 1, 1), too_long, b, false).is_err());
        let fine = MatRef::rows(&a, 2, 4, 4);
        assert!(matmul(MatMut::rows(&mut out, 2, 1, 1), fine, b, false).is_ok());
    }
}
