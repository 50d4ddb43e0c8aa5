//! The hot operations of the networks, in one place so that faster kernels can replace candle's
//! stock ones without touching the model code.

use candle_core::{Result, Tensor};

/// 2-D convolution without bias, NCHW input, OIHW weight, square stride and zero padding.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    x.conv2d(w, padding, stride, 1, 1)
}

/// He et al.'s option-A shortcut: every second pixel (rows and columns 0, 2, 4, …), then zero
/// channels appended up to `out_channels`. Equal to a 1x1 stride-2 convolution whose weight is the
/// identity on the first `C` output channels and zero elsewhere (which is how ONNX gets it).
pub fn subsample_pad_channels(x: &Tensor, out_channels: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let mut x = x.clone();
    if h % 2 == 1 {
        x = x.pad_with_zeros(2, 0, 1)?;
    }
    if w % 2 == 1 {
        x = x.pad_with_zeros(3, 0, 1)?;
    }
    let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
    let x = x
        .reshape((n, c, h2, 2, w2, 2))?
        .narrow(3, 0, 1)?
        .narrow(5, 0, 1)?
        .reshape((n, c, h2, w2))?;
    if out_channels > c {
        let zeros = Tensor::zeros((n, out_channels - c, h2, w2), x.dtype(), x.device())?;
        Tensor::cat(&[&x, &zeros], 1)
    } else {
        Ok(x)
    }
}
