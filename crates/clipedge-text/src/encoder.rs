//! The text tower on tract: one optimized plan with a symbolic sequence length, so a query runs
//! exactly as many positions as it has tokens.

use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::card::{ModelCard, Pooling};
use crate::tokenize::{TextTokenizer, Tokens};
use crate::TextError;

/// One encoded text.
#[derive(Debug, Clone)]
pub struct Encoding {
    /// The embedding, L2-normalized when the card says so.
    pub embedding: Vec<f32>,
    /// Positions the model ran, special tokens included.
    pub tokens: usize,
    /// The text was longer than `max_tokens` and was cut.
    pub truncated: bool,
}

/// Which token-derived tensor feeds each graph input, in the graph's input order.
#[derive(Debug, Clone, Copy)]
enum InputKind {
    Ids,
    Mask,
    TypeIds,
    Positions,
}

/// A model package's files as bytes.
pub struct PackageBytes<'a> {
    pub card_toml: &'a str,
    pub tokenizer_json: &'a [u8],
    pub onnx: &'a [u8],
    /// `text.onnx.data` for graphs exported with external weights; consumed (moved into the
    /// graph) so the weights are not held twice.
    pub external_data: Option<Vec<u8>>,
}

/// One initializer whose bytes are in the external weight file.
struct ExternalTensor {
    proto: tract_onnx::pb::TensorProto,
    offset: usize,
    length: usize,
}

/// Takes the initializers stored in external data out of the graph and declares them as graph
/// inputs instead, so tract parses the graph without their bytes.
///
/// Why: tract resolves external data through a canonicalized model directory, which
/// wasm32-unknown-unknown (the Worker) does not have; and inlining the bytes into the protobuf
/// would hold the weights twice while tract parses (it converts every initializer before it
/// drops any), which is what breaks a 128 MB isolate. [`attach_external_tensors`] then turns the
/// placeholder inputs into constants one tensor at a time.
fn detach_external_tensors(
    proto: &mut tract_onnx::pb::ModelProto,
    data_len: usize,
) -> Result<Vec<ExternalTensor>, TextError> {
    use tract_onnx::pb::{
        tensor_shape_proto, type_proto, TensorShapeProto, TypeProto, ValueInfoProto,
    };
    let invalid = |reason: String| TextError::ModelLoad { reason };
    let Some(graph) = proto.graph.as_mut() else {
        return Ok(Vec::new());
    };
    let (external, inline): (Vec<_>, Vec<_>) = std::mem::take(&mut graph.initializer)
        .into_iter()
        .partition(|tensor| !tensor.external_data.is_empty());
    graph.initializer = inline;
    let mut detached = Vec::with_capacity(external.len());
    for tensor in external {
        let field = |key: &str| {
            tensor
                .external_data
                .iter()
                .find(|entry| entry.key == key)
                .map(|entry| entry.value.clone())
        };
        let number = |key: &str| -> Result<Option<usize>, TextError> {
            field(key)
                .map(|value| {
                    value.parse::<usize>().map_err(|_| {
                        invalid(format!(
                            "tensor {}: external data {key} {value:?} is not a number",
                            tensor.name
                        ))
                    })
                })
                .transpose()
        };
        let offset = number("offset")?.unwrap_or(0);
        let length = match number("length")? {
            Some(length) => length,
            None => data_len.saturating_sub(offset),
        };
        if offset.checked_add(length).is_none_or(|end| end > data_len) {
            return Err(invalid(format!(
                "tensor {}: external data [{offset}, +{length}) is outside the {data_len}-byte \
                 weight file",
                tensor.name
            )));
        }
        if !graph.input.iter().any(|input| input.name == tensor.name) {
            let dims = tensor
                .dims
                .iter()
                .map(|dim| tensor_shape_proto::Dimension {
                    denotation: String::new(),
                    value: Some(tensor_shape_proto::dimension::Value::DimValue(*dim)),
                })
                .collect();
            graph.input.push(ValueInfoProto {
                name: tensor.name.clone(),
                r#type: Some(TypeProto {
                    denotation: String::new(),
                    value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                        elem_type: tensor.data_type,
                        shape: Some(TensorShapeProto { dim: dims }),
                    })),
                }),
                ..ValueInfoProto::default()
            });
        }
        detached.push(ExternalTensor {
            proto: tensor,
            offset,
            length,
        });
    }
    Ok(detached)
}

/// Turns the placeholder inputs [`detach_external_tensors`] made into constants holding their
/// bytes, cutting each tensor from the end of the weight file and truncating it as it goes, so
/// the weights are held about once.
fn attach_external_tensors(
    model: &mut InferenceModel,
    mut tensors: Vec<ExternalTensor>,
    mut data: Vec<u8>,
) -> TractResult<()> {
    tensors.sort_by_key(|tensor| std::cmp::Reverse(tensor.offset));
    let provider = tract_onnx::data_resolver::FopenDataResolver;
    for mut tensor in tensors {
        let end = tensor.offset + tensor.length;
        if end > data.len() {
            return Err(TractError::msg(format!(
                "tensor {}: external data [{}, +{}) overlaps another tensor",
                tensor.proto.name, tensor.offset, tensor.length
            )));
        }
        tensor.proto.raw_data = data[tensor.offset..end].to_vec();
        tensor.proto.external_data.clear();
        tensor.proto.data_location = None;
        data.truncate(tensor.offset);
        data.shrink_to_fit();
        let value =
            tract_onnx::tensor::load_tensor(&provider, &tensor.proto, None)?.into_arc_tensor();
        drop(tensor.proto.raw_data);
        let fact = TypedFact::try_from(value.clone())?;
        let node = model.node_by_name(&tensor.proto.name)?.id;
        model.nodes[node].op = Box::new(tract_onnx::tract_hir::ops::konst::Const::new(value)?);
        model.set_outlet_fact(OutletId::new(node, 0), fact.into())?;
        model.inputs.retain(|outlet| outlet.node != node);
    }
    Ok(())
}

pub struct TextEncoder {
    card: ModelCard,
    tokenizer: TextTokenizer,
    plan: Arc<TypedRunnableModel>,
    inputs: Vec<InputKind>,
}

impl TextEncoder {
    /// Loads a model package directory: `model.toml`, the ONNX graph (with its external weight
    /// file, if any) and `tokenizer.json`. Wherever there is a file system (native, WASI); a
    /// Worker has none and uses [`TextEncoder::from_package`].
    pub fn load(dir: impl AsRef<std::path::Path>) -> Result<TextEncoder, TextError> {
        let dir = dir.as_ref();
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| TextError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let card_bytes = read("model.toml")?;
        let card_text = String::from_utf8(card_bytes).map_err(|_| TextError::Card {
            reason: "model.toml is not UTF-8".to_string(),
        })?;
        let card = ModelCard::from_toml(&card_text)?;
        let tokenizer_json = read(&card.tokenizer_file)?;
        let onnx_path = dir.join(&card.onnx_file);
        // From a path tract memory-maps the graph and resolves external weight files beside it.
        let model = tract_onnx::onnx()
            .model_for_path(&onnx_path)
            .map_err(|error| TextError::ModelLoad {
                reason: format!("{}: {error:#}", onnx_path.display()),
            })?;
        TextEncoder::from_parts(card, &tokenizer_json, model)
    }

    /// Builds an encoder from a package already in memory (the Worker fetches its objects).
    pub fn from_package(package: PackageBytes<'_>) -> Result<TextEncoder, TextError> {
        let card = ModelCard::from_toml(package.card_toml)?;
        let model_load = |error: TractError| TextError::ModelLoad {
            reason: format!("{error:#}"),
        };
        let framework = tract_onnx::onnx();
        let mut reader = package.onnx;
        let mut proto = framework
            .proto_model_for_read(&mut reader)
            .map_err(model_load)?;
        let data_len = package.external_data.as_ref().map_or(0, Vec::len);
        let external = detach_external_tensors(&mut proto, data_len)?;
        let parsed = framework.parse(&proto, None).map_err(model_load)?;
        drop(proto);
        if !parsed.unresolved_inputs.is_empty() {
            return Err(TextError::ModelLoad {
                reason: format!("graph has unresolved inputs {:?}", parsed.unresolved_inputs),
            });
        }
        let mut model = parsed.model;
        if let Some(data) = package.external_data {
            attach_external_tensors(&mut model, external, data).map_err(model_load)?;
        }
        TextEncoder::from_parts(card, package.tokenizer_json, model)
    }

    fn from_parts(
        card: ModelCard,
        tokenizer_json: &[u8],
        model: InferenceModel,
    ) -> Result<TextEncoder, TextError> {
        let tokenizer = TextTokenizer::from_bytes(tokenizer_json, card.max_tokens)?;
        let (plan, inputs) = optimize(&card, model).map_err(|error| TextError::ModelLoad {
            reason: format!("{error:#}"),
        })?;
        Ok(TextEncoder {
            card,
            tokenizer,
            plan,
            inputs,
        })
    }

    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    pub fn tokenize(&self, text: &str) -> Result<Tokens, TextError> {
        self.tokenizer.tokenize(text)
    }

    pub fn encode(&self, text: &str) -> Result<Encoding, TextError> {
        let tokens = self.tokenizer.tokenize(text)?;
        self.encode_tokens(&tokens)
    }

    /// Runs the graph on token ids as given (tests feed padded ids through here too).
    pub fn encode_tokens(&self, tokens: &Tokens) -> Result<Encoding, TextError> {
        let inference = |error: TractError| TextError::Inference {
            reason: format!("{error:#}"),
        };
        let positions = tokens.ids.len();
        let inputs: TVec<TValue> = self
            .inputs
            .iter()
            .map(|kind| {
                let values: Vec<i64> = match kind {
                    InputKind::Ids => tokens.ids.clone(),
                    InputKind::Mask => vec![1; positions],
                    InputKind::TypeIds => tokens.type_ids.clone(),
                    InputKind::Positions => (0..positions as i64).collect(),
                };
                tract_ndarray::Array2::from_shape_vec((1, positions), values)
                    .map(|array| Tensor::from(array).into())
                    .map_err(|error| TextError::Inference {
                        reason: error.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        let outputs = self.plan.run(inputs).map_err(inference)?;
        let output = outputs[0].to_plain_array_view::<f32>().map_err(inference)?;
        let mut embedding = pool(&self.card, output.as_slice().unwrap_or(&[]), output.shape())?;
        if self.card.normalize {
            normalize(&mut embedding);
        }
        Ok(Encoding {
            embedding,
            tokens: positions,
            truncated: tokens.truncated,
        })
    }
}

fn optimize(
    card: &ModelCard,
    mut model: InferenceModel,
) -> TractResult<(Arc<TypedRunnableModel>, Vec<InputKind>)> {
    let sequence = model.symbols.sym("sequence");
    let mut kinds = Vec::new();
    for input_index in 0..model.inputs.len() {
        let name = model.node(model.inputs[input_index].node).name.clone();
        let kind = match name.as_str() {
            "input_ids" => InputKind::Ids,
            "attention_mask" => InputKind::Mask,
            "token_type_ids" => InputKind::TypeIds,
            "position_ids" => InputKind::Positions,
            other => {
                return Err(TractError::msg(format!(
                    "graph input {other:?} is not one the encoder can fill"
                )))
            }
        };
        if !card.inputs.iter().any(|declared| declared == &name) {
            return Err(TractError::msg(format!(
                "graph input {name:?} is not listed in the model card's inputs {:?}",
                card.inputs
            )));
        }
        kinds.push(kind);
        let fact = InferenceFact::dt_shape(i64::datum_type(), tvec!(1.to_dim(), sequence.to_dim()));
        model = model.with_input_fact(input_index, fact)?;
    }
    model.select_outputs_by_name([card.output.as_str()])?;
    let plan = model.into_optimized()?.into_runnable()?;
    Ok((plan, kinds))
}

fn pool(card: &ModelCard, values: &[f32], shape: &[usize]) -> Result<Vec<f32>, TextError> {
    let dim = card.dim;
    let bad_shape = || TextError::Inference {
        reason: format!(
            "output {:?} has shape {shape:?}, expected a last axis of {dim}",
            card.output
        ),
    };
    if shape.last() != Some(&dim) || !values.len().is_multiple_of(dim) || values.is_empty() {
        return Err(bad_shape());
    }
    let rows = values.len() / dim;
    match card.pooling {
        Pooling::Pooled if rows == 1 => Ok(values.to_vec()),
        Pooling::Pooled => Err(bad_shape()),
        Pooling::Cls => Ok(values[..dim].to_vec()),
        Pooling::Mean => {
            let mut sum = vec![0f32; dim];
            for row in values.chunks_exact(dim) {
                for (total, value) in sum.iter_mut().zip(row) {
                    *total += value;
                }
            }
            let scale = 1.0 / rows as f32;
            sum.iter_mut().for_each(|total| *total *= scale);
            Ok(sum)
        }
    }
}

fn normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|value| value * value).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|value| *value /= norm);
    }
}
