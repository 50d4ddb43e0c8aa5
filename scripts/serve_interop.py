"""Starts `sc-runtime serve` on the models in DIR (written by tests/export_parity.rs) and checks it
with tritonclient[http]: liveness, model metadata, and infer logits (JSON and binary tensors)
against tract's within 1e-5. Prints 'N passed, M failed'; exits non-zero on failure."""
import glob
import os
import subprocess
import sys

import numpy as np
import tritonclient.http as httpclient


def main(binary, d):
    models = sorted(glob.glob(os.path.join(d, "*.onnx")))
    if not models:
        print("FAIL: no exported models found\n0 passed, 1 failed")
        return 1
    # tract's own plan, so the logits compare with tract's dump at float rounding.
    env = dict(os.environ, SC_RUNTIME_ENGINE="tract")
    server = subprocess.Popen(
        [binary, "serve", "--port", "0", "--threads", "2", *models],
        stdout=subprocess.PIPE, env=env, text=True)
    passed, failed = 0, 0

    def check(ok, what):
        nonlocal passed, failed
        print(("ok   " if ok else "FAIL ") + what)
        passed, failed = passed + ok, failed + (not ok)

    try:
        line = server.stdout.readline()
        addr = line.split("http://")[1].split()[0]
        client = httpclient.InferenceServerClient(url=addr)
        check(client.is_server_live(), "is_server_live")
        check(client.is_server_ready(), "is_server_ready")
        for path in models:
            tag = os.path.basename(path)[: -len(".onnx")]
            meta = client.get_model_metadata(tag)
            inp, out = meta["inputs"][0], meta["outputs"][0]
            check(meta["platform"] == "onnx" and inp["datatype"] == "FP32"
                  and inp["shape"][0] == -1, f"{tag}: metadata {inp} -> {out}")
            for shape_file in sorted(glob.glob(os.path.join(d, f"{tag}.b*.shape"))):
                stem = shape_file[: -len(".shape")]
                b, c, h, w, k = map(int, open(shape_file).read().split())
                x = np.fromfile(stem + ".input.f32", dtype="<f4").reshape(b, c, h, w)
                tract = np.fromfile(stem + ".tract.f32", dtype="<f4").reshape(b, k)
                for binary_data in (False, True):
                    i = httpclient.InferInput(inp["name"], [b, c, h, w], "FP32")
                    i.set_data_from_numpy(x, binary_data=binary_data)
                    o = httpclient.InferRequestedOutput(out["name"], binary_data=binary_data)
                    got = client.infer(tag, [i], outputs=[o]).as_numpy(out["name"])
                    scale = max(1.0, float(np.abs(tract).max()))
                    diff = float(np.abs(got - tract).max())
                    check(got.shape == (b, k) and diff <= 1e-5 * scale,
                          f"{os.path.basename(stem)} binary={binary_data}: "
                          f"max abs diff vs tract {diff:.2e}")
    except Exception as e:  # noqa: BLE001 - report, then the summary line
        check(False, f"client error: {e!r}")
    finally:
        server.terminate()
        code = server.wait(timeout=30)
        check(code == 0, f"server exit code {code} after SIGTERM")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
