"""Starts `sc-runtime serve` on the models in DIR (written by tests/export_parity.rs) and checks it
with tritonclient[http]: liveness, model metadata, and infer logits (JSON and binary tensors)
against tract's within 1e-5 (the server on tract), then the native executor's served logits
against onnxruntime's on the same files within 1e-4 of the logit scale, with the same argmax.
Prints 'N passed, M failed'; exits non-zero on failure."""
import glob
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient


def start(binary, models, engine):
    env = dict(os.environ, SC_RUNTIME_ENGINE=engine)
    server = subprocess.Popen(
        [binary, "serve", "--port", "0", "--threads", "2", *models],
        stdout=subprocess.PIPE, env=env, text=True)
    line = server.stdout.readline()
    return server, line.split("http://")[1].split()[0]


def cases(d, tag):
    """(name, input, tract's logits) of each batch export_parity wrote for model `tag`."""
    for shape_file in sorted(glob.glob(os.path.join(d, f"{tag}.b*.shape"))):
        stem = shape_file[: -len(".shape")]
        b, c, h, w, k = map(int, open(shape_file).read().split())
        x = np.fromfile(stem + ".input.f32", dtype="<f4").reshape(b, c, h, w)
        tract = np.fromfile(stem + ".tract.f32", dtype="<f4").reshape(b, k)
        yield os.path.basename(stem), x, tract


def infer(client, tag, meta, x, binary_data):
    inp, out = meta["inputs"][0], meta["outputs"][0]
    i = httpclient.InferInput(inp["name"], list(x.shape), "FP32")
    i.set_data_from_numpy(x, binary_data=binary_data)
    o = httpclient.InferRequestedOutput(out["name"], binary_data=binary_data)
    return client.infer(tag, [i], outputs=[o]).as_numpy(out["name"])


def main(binary, d):
    models = sorted(glob.glob(os.path.join(d, "*.onnx")))
    if not models:
        print("FAIL: no exported models found\n0 passed, 1 failed")
        return 1
    passed, failed = 0, 0

    def check(ok, what):
        nonlocal passed, failed
        print(("ok   " if ok else "FAIL ") + what)
        passed, failed = passed + ok, failed + (not ok)

    def stop(server, what):
        server.terminate()
        code = server.wait(timeout=30)
        check(code == 0, f"{what}: server exit code {code} after SIGTERM")

    # tract's own plan, so the logits compare with tract's dump at float rounding.
    server, addr = start(binary, models, "tract")
    try:
        client = httpclient.InferenceServerClient(url=addr)
        check(client.is_server_live(), "is_server_live")
        check(client.is_server_ready(), "is_server_ready")
        for path in models:
            tag = os.path.basename(path)[: -len(".onnx")]
            meta = client.get_model_metadata(tag)
            inp, out = meta["inputs"][0], meta["outputs"][0]
            check(meta["platform"] == "onnx" and inp["datatype"] == "FP32"
                  and inp["shape"][0] == -1, f"{tag}: metadata {inp} -> {out}")
            for name, x, tract in cases(d, tag):
                for binary_data in (False, True):
                    got = infer(client, tag, meta, x, binary_data)
                    scale = max(1.0, float(np.abs(tract).max()))
                    diff = float(np.abs(got - tract).max())
                    check(got.shape == tract.shape and diff <= 1e-5 * scale,
                          f"{name} binary={binary_data}: max abs diff vs tract {diff:.2e}")
    except Exception as e:  # noqa: BLE001 - report, then the summary line
        check(False, f"client error (tract): {e!r}")
    finally:
        stop(server, "tract")

    # The native executor (the sc-kernels convolutions, what the default picks where it is
    # faster) against onnxruntime, an independent implementation, on the same files.
    env = dict(os.environ, SC_RUNTIME_ENGINE="native")
    for path in models:
        info = subprocess.run([binary, "info", path], env=env, capture_output=True, text=True)
        line = next((l for l in info.stdout.splitlines() if l.startswith("executor")), "")
        check(info.returncode == 0 and line.split()[1:2] == ["native"],
              f"{os.path.basename(path)}: {line or info.stderr.strip()}")
    server, addr = start(binary, models, "native")
    try:
        client = httpclient.InferenceServerClient(url=addr)
        for path in models:
            tag = os.path.basename(path)[: -len(".onnx")]
            meta = client.get_model_metadata(tag)
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            for name, x, _ in cases(d, tag):
                (want,) = sess.run([meta["outputs"][0]["name"]], {meta["inputs"][0]["name"]: x})
                for binary_data in (False, True):
                    got = infer(client, tag, meta, x, binary_data)
                    scale = max(1.0, float(np.abs(want).max()))
                    # NaN anywhere is an infinite error.
                    err = np.abs(got.astype(np.float64) - want) if got.shape == want.shape else None
                    diff = float("inf") if err is None or np.isnan(err).any() else float(err.max())
                    argmax = err is not None and bool((got.argmax(1) == want.argmax(1)).all())
                    check(diff <= 1e-4 * scale and argmax,
                          f"{name} binary={binary_data}: native served vs onnxruntime "
                          f"max abs diff {diff:.2e} (scale {scale:.2f}), argmax equal: {argmax}")
    except Exception as e:  # noqa: BLE001 - report, then the summary line
        check(False, f"client error (native): {e!r}")
    finally:
        stop(server, "native")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
