//! The ONNX text tower on tract (feature `onnx`): one optimized plan with a symbolic sequence
//! length, so a query runs exactly as many positions as it has tokens. The native reference for
//! the int8 engine, and the engine of packages that ship no `text.int8`.

use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::card::ModelCard;
use crate::{TextError, Tokens};

/// Which token-derived tensor feeds each graph input, in the graph's input order.
#[derive(Debug, Clone, Copy)]
enum InputKind {
    Ids,
    Mask,
    TypeIds,
    Positions,
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

/// An optimized tract plan of the text graph.
pub(crate) struct OnnxTower {
    plan: Arc<TypedRunnableModel>,
    inputs: Vec<InputKind>,
}

impl OnnxTower {
    /// From a path tract memory-maps the graph and resolves external weight files beside it.
    pub(crate) fn load(
        card: &ModelCard,
        onnx_path: &std::path::Path,
    ) -> Result<OnnxTower, TextError> {
        let model = tract_onnx::onnx()
            .model_for_path(onnx_path)
            .map_err(|error| TextError::ModelLoad {
                reason: format!("{}: {error:#}", onnx_path.display()),
            })?;
        OnnxTower::from_model(card, model)
    }

    /// From bytes in memory (a fetched package), external weights attached tensor by tensor.
    pub(crate) fn from_bytes(
        card: &ModelCard,
        onnx: &[u8],
        external_data: Option<Vec<u8>>,
    ) -> Result<OnnxTower, TextError> {
        let model_load = |error: TractError| TextError::ModelLoad {
            reason: format!("{error:#}"),
        };
        let framework = tract_onnx::onnx();
        let mut reader = onnx;
        let mut proto = framework
            .proto_model_for_read(&mut reader)
            .map_err(model_load)?;
        let data_len = external_data.as_ref().map_or(0, Vec::len);
        let external = detach_external_tensors(&mut proto, data_len)?;
        let parsed = framework.parse(&proto, None).map_err(model_load)?;
        drop(proto);
        if !parsed.unresolved_inputs.is_empty() {
            return Err(TextError::ModelLoad {
                reason: format!("graph has unresolved inputs {:?}", parsed.unresolved_inputs),
            });
        }
        let mut model = parsed.model;
        if let Some(data) = external_data {
            attach_external_tensors(&mut model, external, data).map_err(model_load)?;
        }
        OnnxTower::from_model(card, model)
    }

    fn from_model(card: &ModelCard, model: InferenceModel) -> Result<OnnxTower, TextError> {
        let (plan, inputs) = optimize(card, model).map_err(|error| TextError::ModelLoad {
            reason: format!("{error:#}"),
        })?;
        Ok(OnnxTower { plan, inputs })
    }

    /// Runs the graph on the token ids as given; returns the output's values and shape.
    pub(crate) fn run(&self, tokens: &Tokens) -> Result<(Vec<f32>, Vec<usize>), TextError> {
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
        Ok((
            output.as_slice().unwrap_or(&[]).to_vec(),
            output.shape().to_vec(),
        ))
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
