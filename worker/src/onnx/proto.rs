//! The protobuf wire format, as much of it as the ONNX rewrites need
//! (`widen`, `any_side`, `prune`, `int8_conv`, `snake`, `dequant`, `adain`, `stft`): a message read field by field, fields copied as
//! they were encoded or written anew.
//!
//! Written here rather than with a protobuf crate: the rewrites touch a few
//! fields of a stable format, and a generated ONNX schema would bring a code
//! generator or a large dependency for it. Every byte not rewritten is
//! copied as it is.

use std::collections::{HashMap, HashSet};

#[derive(Debug, thiserror::Error)]
#[error("ONNX model: {0}")]
pub struct ModelError(pub &'static str);

/// ONNX's `TensorProto.DataType` values the rewrites use.
pub(super) mod dtype {
    pub const FLOAT: u64 = 1;
    pub const UINT8: u64 = 2;
    pub const INT8: u64 = 3;
    #[cfg(test)]
    pub const INT32: u64 = 6;
    pub const INT64: u64 = 7;
    pub const FLOAT16: u64 = 10;
}

#[derive(Clone, Copy)]
pub(super) enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

#[derive(Clone, Copy)]
pub(super) struct Field<'a> {
    pub number: u64,
    pub value: Value<'a>,
    /// The whole field as encoded (key included), for copying.
    pub raw: &'a [u8],
}

/// The fields of one message, in order.
pub(super) struct Fields<'a>(pub &'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, ModelError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let all = self.0;
        let parsed = (|| {
            let (key, mut at) = varint(all)?;
            let value = match key & 7 {
                0 => {
                    let (v, n) = varint(&all[at..])?;
                    at += n;
                    Value::Varint(v)
                }
                1 => {
                    at = at.checked_add(8).filter(|&e| e <= all.len())?;
                    Value::Fixed
                }
                2 => {
                    let (len, n) = varint(&all[at..])?;
                    let start = at + n;
                    let end = start.checked_add(usize::try_from(len).ok()?).filter(|&e| e <= all.len())?;
                    at = end;
                    Value::Bytes(&all[start..end])
                }
                5 => {
                    at = at.checked_add(4).filter(|&e| e <= all.len())?;
                    Value::Fixed
                }
                _ => return None,
            };
            Some((Field { number: key >> 3, value, raw: &all[..at] }, at))
        })();
        match parsed {
            Some((field, at)) => {
                self.0 = &all[at..];
                Some(Ok(field))
            }
            None => {
                self.0 = &[];
                Some(Err(ModelError("bad protobuf field")))
            }
        }
    }
}

/// The parts of a NodeProto the rewrites read.
pub(super) struct Node<'a> {
    pub(super) op: &'a [u8],
    pub(super) domain: &'a [u8],
    pub(super) inputs: Vec<&'a [u8]>,
    pub(super) outputs: Vec<&'a [u8]>,
    pub(super) attrs: Vec<&'a [u8]>,
    pub(super) subgraph: bool,
}

impl<'a> Node<'a> {
    pub(super) fn parse(raw: &'a [u8]) -> Result<Node<'a>, ModelError> {
        let mut n = Node { op: b"", domain: b"", inputs: vec![], outputs: vec![], attrs: vec![], subgraph: false };
        for f in Fields(raw) {
            match f? {
                Field { number: 1, value: Value::Bytes(b), .. } => n.inputs.push(b),
                Field { number: 2, value: Value::Bytes(b), .. } => n.outputs.push(b),
                Field { number: 4, value: Value::Bytes(b), .. } => n.op = b,
                Field { number: 7, value: Value::Bytes(b), .. } => n.domain = b,
                Field { number: 5, value: Value::Bytes(a), .. } => {
                    // AttributeProto.g (6) and .graphs (11).
                    for f in Fields(a) {
                        n.subgraph |= matches!(f?, Field { number: 6 | 11, .. });
                    }
                    n.attrs.push(a);
                }
                _ => {}
            }
        }
        Ok(n)
    }
}

/// The parts of an AttributeProto the rewrites read: its name, its one
/// integer (`i`), its integers (`ints`, packed or not) and its string.
pub(super) struct Attribute<'a> {
    pub(super) name: &'a [u8],
    pub(super) int: Option<i64>,
    pub(super) ints: Vec<i64>,
    pub(super) string: &'a [u8],
}

impl<'a> Attribute<'a> {
    pub(super) fn parse(raw: &'a [u8]) -> Result<Attribute<'a>, ModelError> {
        let mut a = Attribute { name: b"", int: None, ints: Vec::new(), string: b"" };
        for f in Fields(raw) {
            match f? {
                Field { number: 1, value: Value::Bytes(b), .. } => a.name = b,
                Field { number: 3, value: Value::Varint(v), .. } => a.int = Some(v as i64),
                Field { number: 4, value: Value::Bytes(b), .. } => a.string = b,
                Field { number: 8, value: Value::Varint(v), .. } => a.ints.push(v as i64),
                Field { number: 8, value: Value::Bytes(b), .. } => {
                    a.ints.extend(packed(b)?.into_iter().map(|v| v as i64))
                }
                _ => {}
            }
        }
        Ok(a)
    }
}

/// The parts of a TensorProto the rewrites read.
pub(super) struct Tensor<'a> {
    pub(super) dims: Vec<u64>,
    pub(super) data_type: u64,
    pub(super) raw: Option<&'a [u8]>,
    pub(super) int32: Vec<u64>,
    /// int64_data, packed or not.
    pub(super) int64: Vec<u64>,
    /// float_data, packed or not.
    pub(super) floats: Vec<f32>,
    pub(super) external: bool,
}

impl<'a> Tensor<'a> {
    pub(super) fn parse(b: &'a [u8]) -> Result<Tensor<'a>, ModelError> {
        let mut t = Tensor {
            dims: vec![],
            data_type: 0,
            raw: None,
            int32: vec![],
            int64: vec![],
            floats: vec![],
            external: false,
        };
        for f in Fields(b) {
            match f? {
                Field { number: 1, value: Value::Varint(d), .. } => t.dims.push(d),
                Field { number: 1, value: Value::Bytes(b), .. } => t.dims.extend(packed(b)?),
                Field { number: 2, value: Value::Varint(v), .. } => t.data_type = v,
                Field { number: 5, value: Value::Varint(v), .. } => t.int32.push(v),
                Field { number: 5, value: Value::Bytes(b), .. } => t.int32.extend(packed(b)?),
                Field { number: 7, value: Value::Varint(v), .. } => t.int64.push(v),
                Field { number: 7, value: Value::Bytes(b), .. } => t.int64.extend(packed(b)?),
                Field { number: 4, value: Value::Bytes(b), .. } => {
                    t.floats.extend(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                }
                // Unpacked: key 0x25 (field 4, 32-bit), then the float.
                Field { number: 4, value: Value::Fixed, raw: &[0x25, p, q, r, s] } => {
                    t.floats.push(f32::from_le_bytes([p, q, r, s]))
                }
                Field { number: 9, value: Value::Bytes(b), .. } => t.raw = Some(b),
                // data_location EXTERNAL, or external_data entries.
                Field { number: 14, value: Value::Varint(1), .. } | Field { number: 13, .. } => t.external = true,
                _ => {}
            }
        }
        Ok(t)
    }

    /// Its values as i64, from raw_data or int64_data (of an int64 tensor:
    /// `None` for another type).
    pub(super) fn i64_values(&self) -> Option<Vec<i64>> {
        if self.data_type != dtype::INT64 || self.external {
            return None;
        }
        Some(match self.raw {
            Some(raw) => raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
            None => self.int64.iter().map(|&v| v as i64).collect(),
        })
    }

    /// Its values as f32, from raw_data or float_data.
    pub(super) fn f32_values(&self) -> Vec<f32> {
        match self.raw {
            Some(raw) => raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            None => self.floats.clone(),
        }
    }
}

/// Whether an op domain is ONNX's own (`""` or `ai.onnx`).
pub(super) fn default_domain(domain: &[u8]) -> bool {
    domain.is_empty() || domain == b"ai.onnx"
}

/// The parts of a GraphProto the rewrites read: its nodes, its
/// initializers by name, and the names of its inputs, its outputs and the
/// values it describes (`value_info`).
pub(super) struct Graph<'a> {
    pub(super) nodes: Vec<Node<'a>>,
    pub(super) initializers: HashMap<&'a [u8], &'a [u8]>,
    pub(super) inputs: HashSet<&'a [u8]>,
    pub(super) outputs: HashSet<&'a [u8]>,
    pub(super) described: Vec<&'a [u8]>,
}

impl<'a> Graph<'a> {
    pub(super) fn parse(msg: &'a [u8]) -> Result<Graph<'a>, ModelError> {
        let mut g = Graph {
            nodes: Vec::new(),
            initializers: HashMap::new(),
            inputs: HashSet::new(),
            outputs: HashSet::new(),
            described: Vec::new(),
        };
        for f in Fields(msg) {
            match f? {
                Field { number: 1, value: Value::Bytes(b), .. } => g.nodes.push(Node::parse(b)?),
                Field { number: 5, value: Value::Bytes(b), .. } => {
                    g.initializers.insert(first_bytes(b, 8)?.ok_or(ModelError("an initializer has no name"))?, b);
                }
                Field { number: n @ 11..=13, value: Value::Bytes(b), .. } => {
                    let name = first_bytes(b, 1)?.unwrap_or_default();
                    match n {
                        11 => g.inputs.insert(name),
                        12 => g.outputs.insert(name),
                        _ => {
                            g.described.push(name);
                            false
                        }
                    };
                }
                _ => {}
            }
        }
        Ok(g)
    }

    /// Whether any value (a node's output, an initializer, an input, an
    /// output or a described value) has a name starting with `prefix`.
    pub(super) fn names_start_with(&self, prefix: &str) -> bool {
        let p = prefix.as_bytes();
        self.nodes.iter().flat_map(|n| &n.outputs).chain(self.initializers.keys()).any(|n| n.starts_with(p))
            || self.inputs.iter().chain(&self.outputs).chain(&self.described).any(|n| n.starts_with(p))
    }
}

/// Which node makes each value of a graph, and how many times nodes read
/// it (a node reading it twice counts twice).
pub(super) struct Wiring<'a> {
    producer: HashMap<&'a [u8], usize>,
    readers: HashMap<&'a [u8], usize>,
}

impl<'a> Wiring<'a> {
    pub(super) fn new(nodes: &[Node<'a>]) -> Wiring<'a> {
        let producer = nodes.iter().enumerate().flat_map(|(k, n)| n.outputs.iter().map(move |&o| (o, k))).collect();
        let mut readers: HashMap<&[u8], usize> = HashMap::new();
        for n in nodes {
            for &i in &n.inputs {
                *readers.entry(i).or_default() += 1;
            }
        }
        Wiring { producer, readers }
    }

    /// The index of the node that makes `v`.
    pub(super) fn producer(&self, v: &[u8]) -> Option<usize> {
        self.producer.get(v).copied()
    }

    /// How many times nodes read `v`.
    pub(super) fn reads(&self, v: &[u8]) -> usize {
        self.readers.get(v).copied().unwrap_or(0)
    }
}

impl<'a> Graph<'a> {
    /// The initializer `v`, unless a graph input names it too (a caller may
    /// replace it: no constant).
    pub(super) fn constant(&self, v: &[u8]) -> Option<&'a [u8]> {
        self.initializers.get(v).copied().filter(|_| !self.inputs.contains(v))
    }

    /// The node that makes `v` when a fusion may fold it into `v`'s one
    /// reader: `v` read once and no graph output, the node `op` of ONNX's
    /// own domain with one output and `inputs` inputs, none of them empty,
    /// and no attributes unless `attrs` (the caller checks them).
    pub(super) fn private_producer(
        &self,
        w: &Wiring,
        v: &[u8],
        (op, inputs, attrs): (&[u8], usize, bool),
    ) -> Option<usize> {
        w.producer(v).filter(|&p| {
            let n = &self.nodes[p];
            w.reads(v) == 1 && !self.outputs.contains(v) && n.op == op && n.is_plain(inputs, attrs)
        })
    }
}

impl<'a> Node<'a> {
    /// Whether the node is of ONNX's own domain with one output and `inputs`
    /// inputs, none of them empty, and no attributes unless `attrs`.
    pub(super) fn is_plain(&self, inputs: usize, attrs: bool) -> bool {
        default_domain(self.domain)
            && self.outputs.len() == 1
            && self.inputs.len() == inputs
            && self.inputs.iter().all(|i| !i.is_empty())
            && (attrs || self.attrs.is_empty())
    }

    /// Whether every attribute of the node is one `allowed` accepts.
    pub(super) fn attrs_are(&self, allowed: impl Fn(&Attribute) -> bool) -> Result<bool, ModelError> {
        for a in &self.attrs {
            if !allowed(&Attribute::parse(a)?) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// A chain of nodes a fusion found: the fused node's inputs, and the nodes
/// folded into it (the one it replaces not among them).
pub(super) type Chain<'a> = (Vec<&'a [u8]>, Vec<usize>);

/// `model` (the bytes of an .onnx file) with each chain `find` finds fused
/// into one node `op` of `domain` (named `{prefix}_{index}`). `find` is
/// asked of each node (by index) whether it ends a chain, and the chain's
/// node takes its place. `domain` is imported if any was fused; the model
/// is returned as it was if none (or if a node holds a subgraph, whose
/// reads the wiring would not see).
pub(super) fn fuse_chains(
    model: &[u8],
    (domain, op, prefix): (&str, &str, &str),
    find: for<'g> fn(&Graph<'g>, &Wiring<'g>, usize) -> Result<Option<Chain<'g>>, ModelError>,
) -> Result<Vec<u8>, ModelError> {
    let mut found = 0;
    let out = rewrite_graph(model, 0, |msg, out| {
        let g = Graph::parse(msg)?;
        if g.nodes.iter().any(|n| n.subgraph) {
            return Ok(());
        }
        let wiring = Wiring::new(&g.nodes);
        let mut fused: HashMap<usize, Vec<&[u8]>> = HashMap::new();
        let mut folded: HashSet<usize> = HashSet::new();
        for k in 0..g.nodes.len() {
            if let Some((inputs, parts)) = find(&g, &wiring, k)? {
                fused.insert(k, inputs);
                folded.extend(parts);
            }
        }
        found = fused.len();
        put_fused(msg, out, &g.nodes, &fused, &folded, (domain, op, prefix))
    })?;
    if found == 0 {
        return Ok(model.to_vec());
    }
    import_domain(out, domain)
}

/// The graph `msg` (its nodes `nodes`) written to `out` with each chain of
/// nodes fused into one: the node at each index of `fused` becomes `op` of
/// `domain`, reading the values listed and making that node's first output
/// (named `{prefix}_{index}`); the nodes of `folded` go; every other field
/// is copied as it was.
fn put_fused(
    msg: &[u8],
    out: &mut Vec<u8>,
    nodes: &[Node],
    fused: &HashMap<usize, Vec<&[u8]>>,
    folded: &HashSet<usize>,
    (domain, op, prefix): (&str, &str, &str),
) -> Result<(), ModelError> {
    let mut k = 0;
    for f in Fields(msg) {
        let f = f?;
        match (f.number, f.value) {
            (1, Value::Bytes(_)) => {
                let at = k;
                k += 1;
                if folded.contains(&at) {
                    continue;
                }
                match fused.get(&at) {
                    Some(inputs) => {
                        let mut n = Vec::new();
                        for i in inputs {
                            put_bytes_field(&mut n, 1, i);
                        }
                        put_bytes_field(&mut n, 2, nodes[at].outputs[0]);
                        put_bytes_field(&mut n, 3, format!("{prefix}_{at}").as_bytes());
                        put_bytes_field(&mut n, 4, op.as_bytes());
                        put_bytes_field(&mut n, 7, domain.as_bytes());
                        put_bytes_field(out, 1, &n);
                    }
                    None => out.extend_from_slice(f.raw),
                }
            }
            _ => out.extend_from_slice(f.raw),
        }
    }
    Ok(())
}

/// A varint and its length in bytes.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn put_varint_field(out: &mut Vec<u8>, number: u64, v: u64) {
    put_varint(out, number << 3);
    put_varint(out, v);
}

pub(super) fn put_bytes_field(out: &mut Vec<u8>, number: u64, b: &[u8]) {
    put_varint(out, number << 3 | 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// f32 values as a tensor's raw data (little-endian).
pub(super) fn raw_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// i64 values as a tensor's raw data (little-endian).
pub(super) fn raw_i64(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A TensorProto body: `dims` (none for a scalar), values of `data_type`
/// little-endian in `raw`.
pub(super) fn tensor(name: &str, data_type: u64, dims: &[u64], raw: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(raw.len() + name.len() + 32);
    for &d in dims {
        put_varint_field(&mut t, 1, d);
    }
    put_varint_field(&mut t, 2, data_type);
    put_bytes_field(&mut t, 8, name.as_bytes());
    put_bytes_field(&mut t, 9, raw);
    t
}

/// A TensorProto (see [`tensor`]) as an initializer, graph field 5.
pub(super) fn put_initializer(out: &mut Vec<u8>, name: &str, data_type: u64, dims: &[u64], raw: &[u8]) {
    put_bytes_field(out, 5, &tensor(name, data_type, dims, raw));
}

/// An attribute of a node written by a rewrite.
#[derive(Clone, Copy)]
pub(super) enum Attr<'a> {
    Int(&'a str, i64),
    Ints(&'a str, &'a [i64]),
}

/// A NodeProto (in the default domain) as graph field 1.
pub(super) fn put_node(out: &mut Vec<u8>, op: &str, name: &str, inputs: &[&[u8]], outputs: &[&[u8]], attrs: &[Attr]) {
    let mut n = Vec::new();
    for i in inputs {
        put_bytes_field(&mut n, 1, i);
    }
    for o in outputs {
        put_bytes_field(&mut n, 2, o);
    }
    put_bytes_field(&mut n, 3, name.as_bytes());
    put_bytes_field(&mut n, 4, op.as_bytes());
    for a in attrs {
        // AttributeProto: name 1, i 3, ints 8, type 20 (INT 2, INTS 7).
        let mut b = Vec::new();
        match a {
            Attr::Int(name, v) => {
                put_bytes_field(&mut b, 1, name.as_bytes());
                put_varint_field(&mut b, 3, *v as u64);
                put_varint_field(&mut b, 20, 2);
            }
            Attr::Ints(name, vs) => {
                put_bytes_field(&mut b, 1, name.as_bytes());
                for &v in *vs {
                    put_varint_field(&mut b, 8, v as u64);
                }
                put_varint_field(&mut b, 20, 7);
            }
        }
        put_bytes_field(&mut n, 5, &b);
    }
    put_bytes_field(out, 1, &n);
}

/// A length-delimited field whose body `body` writes.
pub(super) fn put_message(
    out: &mut Vec<u8>,
    number: u64,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let mut inner = Vec::new();
    body(&mut inner)?;
    put_bytes_field(out, number, &inner);
    Ok(())
}

/// `model` (the bytes of an .onnx file) with its one graph
/// (`ModelProto.graph`) replaced by what `graph` writes from it, every other
/// field copied; `extra` bytes of room are kept for what the rewrite adds
/// (a graph of a widened model is some 176 MB: sized up front). Fails on a
/// model without exactly one graph.
pub(super) fn rewrite_graph(
    model: &[u8],
    extra: usize,
    mut graph: impl FnMut(&[u8], &mut Vec<u8>) -> Result<(), ModelError>,
) -> Result<Vec<u8>, ModelError> {
    let mut out = Vec::with_capacity(model.len() + extra);
    let mut graphs = 0;
    for f in Fields(model) {
        let f = f?;
        match (f.number, f.value) {
            (7, Value::Bytes(g)) => {
                graphs += 1;
                let mut body = Vec::with_capacity(g.len() + extra);
                graph(g, &mut body)?;
                put_bytes_field(&mut out, 7, &body);
            }
            _ => out.extend_from_slice(f.raw),
        }
    }
    if graphs != 1 {
        return Err(ModelError("expected one graph"));
    }
    Ok(out)
}

/// `model` importing operator domain `domain` (version 1), added if it
/// does not already.
fn import_domain(mut model: Vec<u8>, domain: &str) -> Result<Vec<u8>, ModelError> {
    let mut imported = false;
    for f in Fields(&model) {
        // ModelProto.opset_import: OperatorSetIdProto { domain 1, version 2 }.
        if let Field { number: 8, value: Value::Bytes(b), .. } = f? {
            imported |= first_bytes(b, 1)?.unwrap_or_default() == domain.as_bytes();
        }
    }
    if !imported {
        put_message(&mut model, 8, |o| {
            put_bytes_field(o, 1, domain.as_bytes());
            put_varint_field(o, 2, 1);
            Ok(())
        })?;
    }
    Ok(model)
}

/// The body of the first length-delimited field `number` of `msg`, if any.
pub(super) fn first_bytes(msg: &[u8], number: u64) -> Result<Option<&[u8]>, ModelError> {
    for f in Fields(msg) {
        if let Field { number: n, value: Value::Bytes(b), .. } = f?
            && n == number
        {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

/// The integers of a packed repeated field.
pub(super) fn packed(mut b: &[u8]) -> Result<Vec<u64>, ModelError> {
    let mut v = Vec::new();
    while !b.is_empty() {
        let (x, n) = varint(b).ok_or(ModelError("bad packed integers"))?;
        v.push(x);
        b = &b[n..];
    }
    Ok(v)
}

/// The bodies of every length-delimited field `number` of `msg` (tests read
/// rewritten models with it).
#[cfg(test)]
pub(super) fn bytes_fields(msg: &[u8], number: u64) -> Vec<&[u8]> {
    Fields(msg)
        .filter_map(|f| match f.expect("a valid message") {
            Field { number: n, value: Value::Bytes(b), .. } if n == number => Some(b),
            _ => None,
        })
        .collect()
}
