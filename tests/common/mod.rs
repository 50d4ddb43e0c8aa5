//! Data the cross-crate tests make for themselves.

/// A CIFAR-10 record whose class is a colour (with noise), so a tiny net learns it quickly.
pub fn cifar_record(i: usize) -> (u8, Vec<u8>) {
    let c = (i % 10) as u8;
    let mut px = vec![0u8; 3072];
    for (k, p) in px.iter_mut().enumerate() {
        let ch = k / 1024;
        let base = [
            c as usize * 20,
            200 - c as usize * 20,
            (c as usize * 70) % 200,
        ][ch] as u8;
        *p = base + ((i * 31 + k * 17) % 50) as u8;
    }
    (c, px)
}
