//! The README's embedding snippet, compiled with the tests so that it stays true.
//! Run: cargo run --release --example embed -- zoo/resnet20-1cycle-30ep.onnx cat.png

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, image] = &args[..] else {
        anyhow::bail!("usage: embed MODEL.onnx IMAGE");
    };
    // Load and optimize once (Send + Sync: share it); the file carries classes and preprocessing.
    let classifier = sc_runtime::Classifier::load(model)?;
    let image = sc_runtime::load_image(image.as_ref())?;
    for p in classifier.classify(&image, 3)? {
        println!("{} {:.1}%", p.class, 100.0 * p.probability);
    }
    Ok(())
}
