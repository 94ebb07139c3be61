//! A model cut down to its first output: the graph's other outputs, and the
//! nodes, initializers and value descriptions that only they need, removed.
//!
//! The segmentation models list more outputs than the mask the worker
//! reads: IS-Net's export has twelve (the mask, five side outputs each
//! upsampled to the input's full size, and six decoder feature maps), u2netp
//! seven. ONNX Runtime computes the whole graph on every run whichever
//! outputs are fetched. Measured on IS-Net at 896 (onnxruntime 1.31.1, 2
//! threads): through the Python API, fetching only the mask, 1.97-2.00
//! CPU-seconds a run as exported, 1.89 with the other outputs undeclared,
//! 1.80-1.83 with their nodes gone too; in the worker (Rust, after the
//! any-side rewrite, which already frees the outputs' declared shapes) 1.84
//! against 1.80, and 953-982 against 921-972 ms a run in the vision bench.
//! The mask differed by at most 2e-4 (fusions the optimizer could not make
//! while the intermediate values were outputs).
//!
//! A graph input that names a removed initializer (older exports list every
//! initializer as an input too) is removed with it. Refused rather than
//! guessed: a graph with a node that holds a subgraph (`If`, `Loop`,
//! `Scan`: its body may read values the node does not list as inputs), or
//! one without outputs.

use std::collections::{HashMap, HashSet};

use super::proto::{Field, Fields, ModelError, Value, first_bytes, rewrite_graph};

/// `model` (the bytes of an .onnx file) with only its first output.
pub fn first_output_only(model: &[u8]) -> Result<Vec<u8>, ModelError> {
    rewrite_graph(model, 0, graph)
}

/// The parts of a NodeProto this reads.
struct Node<'a> {
    inputs: Vec<&'a [u8]>,
    outputs: Vec<&'a [u8]>,
}

fn node(raw: &[u8]) -> Result<Node<'_>, ModelError> {
    let mut n = Node { inputs: Vec::new(), outputs: Vec::new() };
    for f in Fields(raw) {
        match f? {
            Field { number: 1, value: Value::Bytes(b), .. } => n.inputs.push(b),
            Field { number: 2, value: Value::Bytes(b), .. } => n.outputs.push(b),
            // NodeProto.attribute: AttributeProto.g (6) and .graphs (11).
            Field { number: 5, value: Value::Bytes(attr), .. } => {
                for a in Fields(attr) {
                    if matches!(a?, Field { number: 6 | 11, .. }) {
                        return Err(ModelError("a node holds a subgraph"));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(n)
}

/// The name field (`number`) of a message: ValueInfoProto 1, TensorProto 8.
fn name_of(msg: &[u8], number: u64) -> Result<&[u8], ModelError> {
    first_bytes(msg, number)?.ok_or(ModelError("a graph value has no name"))
}

fn graph(msg: &[u8], out: &mut Vec<u8>) -> Result<(), ModelError> {
    // Pass 1: what each node reads and makes, and the first output.
    let mut nodes = Vec::new();
    let mut first = None;
    for f in Fields(msg) {
        match f? {
            Field { number: 1, value: Value::Bytes(b), .. } => nodes.push(node(b)?),
            Field { number: 12, value: Value::Bytes(b), .. } if first.is_none() => first = Some(name_of(b, 1)?),
            _ => {}
        }
    }
    let first = first.ok_or(ModelError("the graph has no output"))?;
    // Every value the first output is made from, followed back through the
    // nodes that make them.
    // An empty name is an optional input or output left out, not a value.
    let producer: HashMap<&[u8], usize> = nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.outputs.iter().filter(|o| !o.is_empty()).map(move |&o| (o, i)))
        .collect();
    let mut live: HashSet<&[u8]> = HashSet::from([first]);
    let mut live_nodes = vec![false; nodes.len()];
    let mut todo = vec![first];
    while let Some(value) = todo.pop() {
        let Some(&i) = producer.get(value) else { continue };
        if std::mem::replace(&mut live_nodes[i], true) {
            continue;
        }
        for &input in &nodes[i].inputs {
            if !input.is_empty() && live.insert(input) {
                todo.push(input);
            }
        }
    }
    // The initializers removed, so that a graph input naming one goes too.
    let mut dropped: HashSet<&[u8]> = HashSet::new();
    for f in Fields(msg) {
        if let Field { number: 5, value: Value::Bytes(b), .. } = f? {
            let name = name_of(b, 8)?;
            if !live.contains(name) {
                dropped.insert(name);
            }
        }
    }

    // Pass 2: copied, without what is not live.
    let (mut node_index, mut outputs) = (0, 0);
    for f in Fields(msg) {
        let f = f?;
        let keep = match (f.number, f.value) {
            (1, Value::Bytes(_)) => {
                node_index += 1;
                live_nodes[node_index - 1]
            }
            // GraphProto.initializer (TensorProto, named in field 8)
            (5, Value::Bytes(b)) => live.contains(name_of(b, 8)?),
            // GraphProto.input
            (11, Value::Bytes(b)) => !dropped.contains(name_of(b, 1)?),
            (12, _) => {
                outputs += 1;
                outputs == 1
            }
            // GraphProto.value_info
            (13, Value::Bytes(b)) => live.contains(name_of(b, 1)?),
            _ => true,
        };
        if keep {
            out.extend_from_slice(f.raw);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::proto::{bytes_fields, put_bytes_field};
    use super::*;

    fn node_msg(op: &str, inputs: &[&str], outputs: &[&str], attr: Option<&[u8]>) -> Vec<u8> {
        let mut n = Vec::new();
        for i in inputs {
            put_bytes_field(&mut n, 1, i.as_bytes());
        }
        for o in outputs {
            put_bytes_field(&mut n, 2, o.as_bytes());
        }
        put_bytes_field(&mut n, 4, op.as_bytes());
        if let Some(a) = attr {
            put_bytes_field(&mut n, 5, a);
        }
        n
    }

    fn named(number: u64, name: &str) -> Vec<u8> {
        let mut v = Vec::new();
        put_bytes_field(&mut v, number, name.as_bytes());
        v
    }

    /// x, b -> Add -> a -> Split -> (y, s) -> y is the first output;
    /// x, w -> Mul -> m -> Sigmoid -> z (second output). b and w are
    /// initializers, listed as graph inputs too (as older exports do); m is
    /// described in value_info; the Split leaves an optional input out and
    /// the Mul an optional output (both ""), which is no value linking them.
    fn model(attr: Option<&[u8]>) -> Vec<u8> {
        let mut g = Vec::new();
        put_bytes_field(&mut g, 1, &node_msg("Add", &["x", "b"], &["a"], None));
        put_bytes_field(&mut g, 1, &node_msg("Split", &["a", ""], &["y", "s"], None));
        put_bytes_field(&mut g, 1, &node_msg("Mul", &["x", "w"], &["m", ""], attr));
        put_bytes_field(&mut g, 1, &node_msg("Sigmoid", &["m"], &["z"], None));
        put_bytes_field(&mut g, 5, &named(8, "b"));
        put_bytes_field(&mut g, 5, &named(8, "w"));
        put_bytes_field(&mut g, 11, &named(1, "x"));
        put_bytes_field(&mut g, 11, &named(1, "b"));
        put_bytes_field(&mut g, 11, &named(1, "w"));
        put_bytes_field(&mut g, 12, &named(1, "y"));
        put_bytes_field(&mut g, 12, &named(1, "z"));
        put_bytes_field(&mut g, 13, &named(1, "m"));
        let mut m = Vec::new();
        put_bytes_field(&mut m, 7, &g);
        m
    }

    fn names(fields: Vec<&[u8]>, number: u64) -> Vec<String> {
        fields.iter().map(|f| String::from_utf8(name_of(f, number).unwrap().to_vec()).unwrap()).collect()
    }

    #[test]
    fn only_what_the_first_output_needs_is_kept() {
        let pruned = first_output_only(&model(None)).unwrap();
        let g = bytes_fields(&pruned, 7)[0];
        let ops: Vec<&[u8]> = bytes_fields(g, 1).iter().map(|n| bytes_fields(n, 4)[0]).collect();
        assert_eq!(ops, [b"Add".as_slice(), b"Split"], "the node with two outputs is kept whole");
        assert_eq!(names(bytes_fields(g, 12), 1), ["y"]);
        assert_eq!(names(bytes_fields(g, 5), 8), ["b"], "the initializer the first output needs stays, w goes");
        assert_eq!(names(bytes_fields(g, 11), 1), ["x", "b"], "w's listing as an input goes with it");
        assert!(bytes_fields(g, 13).is_empty(), "so does the description of a value only the second output used");
        // A graph whose only output is its first comes back as it was.
        assert_eq!(first_output_only(&pruned).unwrap(), pruned);
    }

    #[test]
    fn subgraphs_and_graphs_without_outputs_are_refused() {
        for field in [6, 11] {
            // AttributeProto.g, .graphs
            let mut attr = Vec::new();
            put_bytes_field(&mut attr, 1, b"body");
            put_bytes_field(&mut attr, field, b"");
            let err = first_output_only(&model(Some(&attr))).unwrap_err();
            assert_eq!(err.0, "a node holds a subgraph");
        }
        let mut g = Vec::new();
        put_bytes_field(&mut g, 1, &node_msg("Relu", &["x"], &["y"], None));
        let mut m = Vec::new();
        put_bytes_field(&mut m, 7, &g);
        assert_eq!(first_output_only(&m).unwrap_err().0, "the graph has no output");
    }
}
