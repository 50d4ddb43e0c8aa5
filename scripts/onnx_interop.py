"""Checks every exported model in DIR with onnx.checker and compares onnxruntime's logits with
tract's (written by tests/export_parity.rs, and for int8 QDQ models by runtime/tests/quantize.rs).
Prints 'N passed, M failed'; exits non-zero on failure.

int8 models (with sc.quantization) are compared within a few quantization steps rather than 1e-4:
onnxruntime runs the QDQ graph with integer kernels and tract dequantizes, so an activation that
lands on a rounding boundary may differ by one step. The bound is 5% of the largest logit, and at
most one image of the batch may change its top class."""
import glob
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main(d):
    passed, failed = 0, 0
    for path in sorted(glob.glob(os.path.join(d, "*.onnx"))):
        tag = os.path.basename(path)[: -len(".onnx")]
        model = onnx.load(path)
        try:
            onnx.checker.check_model(model, full_check=True)
            passed += 1
        except Exception as e:  # noqa: BLE001 - report and continue
            print(f"FAIL {tag}: onnx.checker: {e}")
            failed += 1
            continue
        meta = {p.key: p.value for p in model.metadata_props}
        for key in ("sc.classes", "sc.input", "sc.normalization", "sc.architecture", "sc.parameters"):
            if key not in meta:
                print(f"FAIL {tag}: metadata {key} missing")
                failed += 1
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        for shape_file in sorted(glob.glob(os.path.join(d, f"{tag}.b*.shape"))):
            stem = shape_file[: -len(".shape")]
            b, c, h, w, k = map(int, open(shape_file).read().split())
            x = np.fromfile(stem + ".input.f32", dtype="<f4").reshape(b, c, h, w)
            tract = np.fromfile(stem + ".tract.f32", dtype="<f4").reshape(b, k)
            (ours,) = sess.run(["logits"], {"image": x})
            scale = max(1.0, float(np.abs(tract).max()))
            diff = float(np.abs(ours - tract).max())
            same_argmax = bool((ours.argmax(1) == tract.argmax(1)).all())
            name = os.path.basename(stem)
            if "sc.quantization" in meta:
                moved = int((ours.argmax(1) != tract.argmax(1)).sum())
                ok = diff <= 0.05 * scale and moved <= 1
                same_argmax = moved <= 1
                bound = "int8: bound 5% of the largest logit"
            else:
                ok = diff <= 1e-4 * scale and same_argmax
                bound = "bound 1e-4"
            if ok:
                print(f"ok   {name}: onnxruntime vs tract max abs diff {diff:.2e} ({bound})")
                passed += 1
            else:
                print(f"FAIL {name}: max abs diff {diff:.2e} (scale {scale:.2f}), argmax equal: {same_argmax}")
                failed += 1
    if passed == 0:
        print("FAIL: no exported models found")
        failed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
