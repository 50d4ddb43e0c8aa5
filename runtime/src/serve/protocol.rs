//! The Open Inference Protocol (KServe v2) JSON messages this server reads and writes, and the
//! checks that turn an infer request into `n` images of model input. The binary-data extension
//! (Triton's `binary_tensor_data`) is read and written too: a JSON header of
//! `Inference-Header-Content-Length` bytes, then the raw little-endian tensors.

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// `POST /v2/models/{name}/infer` body (the JSON part).
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    pub inputs: Vec<InputTensor>,
    #[serde(default)]
    pub outputs: Vec<RequestedOutput>,
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct InputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// Row-major values, flat or nested; absent when the tensor travels as binary data.
    #[serde(default)]
    pub data: Option<Flat>,
}

#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

/// The infer response; `data` is left out when the output travels as binary data.
#[derive(Debug, Serialize)]
pub struct InferResponse {
    pub model_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<OutputTensor>,
}

#[derive(Debug, Serialize)]
pub struct OutputTensor {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<usize>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<f32>>,
}

/// What a model takes and gives, for metadata and for checking requests.
#[derive(Debug, Clone)]
pub struct Signature {
    pub input: String,
    /// `[C, H, W]`.
    pub chw: [usize; 3],
    pub output: String,
    pub classes: usize,
    /// Most images in one request (`--max-batch`).
    pub max_batch: usize,
}

/// A checked infer request: `n` images of `C * H * W` values, and how to answer.
#[derive(Debug)]
pub struct Checked {
    pub id: Option<String>,
    pub n: usize,
    pub input: Vec<f32>,
    pub binary_output: bool,
}

/// Parses and checks an infer body; `header_len` is `Inference-Header-Content-Length` when the
/// binary extension is used. Errors are messages for a 400.
pub fn parse_infer(
    body: &[u8],
    header_len: Option<usize>,
    sig: &Signature,
) -> Result<Checked, String> {
    let (json, mut binary) = match header_len {
        Some(len) if len > body.len() => {
            return Err(format!(
                "Inference-Header-Content-Length {len} is more than the body's {} bytes",
                body.len()
            ))
        }
        Some(len) => body.split_at(len),
        None => (body, &[][..]),
    };
    let req: InferRequest =
        serde_json::from_slice(json).map_err(|e| format!("malformed inference request: {e}"))?;
    let [input] = &req.inputs[..] else {
        return Err(format!(
            "expected 1 input ('{}'), got {}",
            sig.input,
            req.inputs.len()
        ));
    };
    if input.name != sig.input {
        return Err(format!(
            "unexpected inference input '{}', the model's input is '{}'",
            input.name, sig.input
        ));
    }
    if input.datatype != "FP32" {
        return Err(format!(
            "input '{}' has datatype {}, the model takes FP32",
            input.name, input.datatype
        ));
    }
    let [c, h, w] = sig.chw;
    let n = match input.shape[..] {
        [n, ic, ih, iw] if [ic, ih, iw] == [c as i64, h as i64, w as i64] && n >= 1 => n as u64,
        _ => {
            return Err(format!(
                "input '{}' has shape {:?}, the model takes [N, {c}, {h}, {w}] with N >= 1",
                input.name, input.shape
            ))
        }
    };
    if n > sig.max_batch as u64 {
        return Err(format!(
            "batch size {n} is more than the {} images a request may hold (--max-batch)",
            sig.max_batch
        ));
    }
    let n = n as usize;
    let len = n * c * h * w;
    let values = match (&input.data, input.parameters.get("binary_data_size")) {
        (Some(_), Some(_)) => return Err("input has both JSON data and binary_data_size".into()),
        (Some(flat), None) => flat.0.clone(),
        (None, Some(size)) => {
            let size = size
                .as_u64()
                .ok_or("binary_data_size must be a non-negative integer")?
                as usize;
            if size != len * 4 || size > binary.len() {
                return Err(format!(
                    "binary_data_size {size}: expected {} bytes for {len} FP32 values, the body holds {}",
                    len * 4,
                    binary.len()
                ));
            }
            let (bytes, rest) = binary.split_at(size);
            binary = rest;
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }
        (None, None) => return Err(format!("input '{}' has no data", input.name)),
    };
    if !binary.is_empty() {
        return Err(format!(
            "{} bytes of binary data after the input",
            binary.len()
        ));
    }
    if values.len() != len {
        return Err(format!(
            "input '{}' of shape {:?} needs {len} values, got {}",
            input.name,
            input.shape,
            values.len()
        ));
    }
    for o in &req.outputs {
        if o.name != sig.output {
            return Err(format!(
                "unknown output '{}', the model's output is '{}'",
                o.name, sig.output
            ));
        }
    }
    let wants_binary = |p: &Map<String, Value>, key: &str| p.get(key).and_then(Value::as_bool);
    let binary_output = match req.outputs.first() {
        Some(o) => wants_binary(&o.parameters, "binary_data").unwrap_or(false),
        None => wants_binary(&req.parameters, "binary_data_output").unwrap_or(false),
    };
    Ok(Checked {
        id: req.id,
        n,
        input: values,
        binary_output,
    })
}

/// The response body and, for binary output, the JSON header's length.
pub fn infer_response(
    model: &str,
    sig: &Signature,
    id: Option<String>,
    n: usize,
    logits: Vec<f32>,
    binary: bool,
) -> (Vec<u8>, Option<usize>) {
    let mut out = OutputTensor {
        name: sig.output.clone(),
        datatype: "FP32",
        shape: vec![n, sig.classes],
        parameters: Map::new(),
        data: None,
    };
    if !binary {
        out.data = Some(logits);
        let resp = InferResponse {
            model_name: model.into(),
            id,
            outputs: vec![out],
        };
        return (serde_json::to_vec(&resp).unwrap_or_default(), None);
    }
    out.parameters
        .insert("binary_data_size".into(), (logits.len() * 4).into());
    let resp = InferResponse {
        model_name: model.into(),
        id,
        outputs: vec![out],
    };
    let mut body = serde_json::to_vec(&resp).unwrap_or_default();
    let header = body.len();
    body.extend(logits.iter().flat_map(|v| v.to_le_bytes()));
    (body, Some(header))
}

/// Numbers, flat or nested in arrays, flattened in row-major order while parsing (no
/// intermediate `serde_json::Value` tree).
#[derive(Debug, Default)]
pub struct Flat(pub Vec<f32>);

impl<'de> Deserialize<'de> for Flat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut values = Vec::new();
        d.deserialize_any(Sink(&mut values))?;
        Ok(Flat(values))
    }
}

struct Sink<'a>(&'a mut Vec<f32>);

impl<'de> Visitor<'de> for Sink<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("numbers or nested arrays of numbers")
    }
    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }
    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.0.push(v as f32);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Sink(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Sink<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig() -> Signature {
        Signature {
            input: "image".into(),
            chw: [1, 2, 2],
            output: "logits".into(),
            classes: 3,
            max_batch: 2,
        }
    }

    #[test]
    fn nested_and_flat_data_agree() {
        let flat = br#"{"inputs":[{"name":"image","shape":[1,1,2,2],"datatype":"FP32","data":[1,2,3.5,4]}]}"#;
        let nested = br#"{"inputs":[{"name":"image","shape":[1,1,2,2],"datatype":"FP32","data":[[[[1,2],[3.5,4]]]]}]}"#;
        let a = parse_infer(flat, None, &sig()).unwrap();
        let b = parse_infer(nested, None, &sig()).unwrap();
        assert_eq!(a.input, vec![1.0, 2.0, 3.5, 4.0]);
        assert_eq!(a.input, b.input);
        assert!(!a.binary_output);
    }

    #[test]
    fn binary_input_and_output() {
        let header = br#"{"inputs":[{"name":"image","shape":[1,1,2,2],"datatype":"FP32","parameters":{"binary_data_size":16}}],"outputs":[{"name":"logits","parameters":{"binary_data":true}}]}"#;
        let mut body = header.to_vec();
        for v in [1.0f32, -2.0, 0.5, 8.0] {
            body.extend(v.to_le_bytes());
        }
        let c = parse_infer(&body, Some(header.len()), &sig()).unwrap();
        assert_eq!(c.input, vec![1.0, -2.0, 0.5, 8.0]);
        assert!(c.binary_output);
        // A declared size that does not match the shape is refused.
        let short = &body[..body.len() - 4];
        assert!(parse_infer(short, Some(header.len()), &sig()).is_err());
        let (resp, len) = infer_response("m", &sig(), None, 1, vec![1.0, 2.0, 3.0], true);
        let len = len.unwrap();
        assert_eq!(resp.len(), len + 12);
        assert_eq!(&resp[len..len + 4], &1.0f32.to_le_bytes());
    }

    #[test]
    fn bad_requests_are_messages() {
        let cases: [(&[u8], &str); 6] = [
            (b"{", "malformed"),
            (br#"{"inputs":[{"name":"image","shape":[1,1,2,2],"datatype":"INT64","data":[1,2,3,4]}]}"#, "datatype"),
            (br#"{"inputs":[{"name":"image","shape":[1,1,2,3],"datatype":"FP32","data":[1,2,3,4,5,6]}]}"#, "shape"),
            (br#"{"inputs":[{"name":"image","shape":[3,1,2,2],"datatype":"FP32","data":[]}]}"#, "batch size 3"),
            (br#"{"inputs":[{"name":"image","shape":[1,1,2,2],"datatype":"FP32","data":[1,2,3]}]}"#, "needs 4 values"),
            (br#"{"inputs":[{"name":"x","shape":[1,1,2,2],"datatype":"FP32","data":[1,2,3,4]}]}"#, "unexpected inference input"),
        ];
        for (body, needle) in cases {
            let e = parse_infer(body, None, &sig()).unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
