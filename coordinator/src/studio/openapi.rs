//! The OpenAPI 3.1 document of the public REST API, generated, never written by hand: the
//! paths from the route table (`rest::ROUTES`), the schemas from the protobuf descriptors of
//! the messages those routes carry, in the proto3 JSON mapping the gateway speaks (the .proto
//! field names; 64-bit integers as strings; enums by name; `Timestamp` as RFC 3339;
//! `Duration` as `"1.5s"`; bytes as base64).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use axum::response::Response;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use serde_json::{json, Map, Value};

use super::gateway::{json, ApiError};
use super::rest::{Answer, ROUTES};

/// Every message and enum of the descriptor set, by full name (`tutti.v1.Job`).
struct Types {
    messages: BTreeMap<String, DescriptorProto>,
    enums: BTreeMap<String, EnumDescriptorProto>,
}

impl Types {
    fn load() -> Result<Types, String> {
        let set = FileDescriptorSet::decode(tutti_proto::FILE_DESCRIPTOR_SET)
            .map_err(|e| format!("descriptor set: {e}"))?;
        let mut t = Types {
            messages: BTreeMap::new(),
            enums: BTreeMap::new(),
        };
        for f in set.file {
            let pkg = f.package.unwrap_or_default();
            for e in f.enum_type {
                t.enums.insert(format!("{pkg}.{}", e.name()), e);
            }
            for m in f.message_type {
                t.add_message(&pkg, m);
            }
        }
        Ok(t)
    }

    fn add_message(&mut self, scope: &str, m: DescriptorProto) {
        let name = format!("{scope}.{}", m.name());
        for e in &m.enum_type {
            self.enums.insert(format!("{name}.{}", e.name()), e.clone());
        }
        for n in &m.nested_type {
            self.add_message(&name, n.clone());
        }
        self.messages.insert(name, m);
    }
}

/// The component name of a full type name: the package dropped (`tutti.v1.Job` -> `Job`).
fn component(full: &str) -> String {
    full.trim_start_matches('.')
        .trim_start_matches("tutti.v1.")
        .to_string()
}

fn reference(full: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{}", component(full)) })
}

struct Builder<'a> {
    types: &'a Types,
    schemas: Map<String, Value>,
    done: BTreeSet<String>,
}

impl Builder<'_> {
    /// The schema of a message, adding it (and what it refers to) to the components.
    fn message(&mut self, full: &str) -> Result<Value, String> {
        let full = full.trim_start_matches('.');
        match full {
            "google.protobuf.Timestamp" => {
                return Ok(json!({ "type": "string", "format": "date-time" }))
            }
            "google.protobuf.Duration" => {
                return Ok(
                    json!({ "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$",
                                  "description": "seconds with an s suffix, e.g. \"600s\"" }),
                )
            }
            _ => {}
        }
        if self.done.insert(full.to_string()) {
            let m = self
                .types
                .messages
                .get(full)
                .ok_or_else(|| format!("no message {full}"))?
                .clone();
            let mut props = Map::new();
            for f in &m.field {
                props.insert(f.name().to_string(), self.field(f)?);
            }
            self.schemas.insert(
                component(full),
                json!({ "type": "object", "properties": props }),
            );
        }
        Ok(reference(full))
    }

    fn enumeration(&mut self, full: &str) -> Result<Value, String> {
        let full = full.trim_start_matches('.');
        if self.done.insert(full.to_string()) {
            let e = self
                .types
                .enums
                .get(full)
                .ok_or_else(|| format!("no enum {full}"))?;
            let names: Vec<&str> = e.value.iter().map(|v| v.name()).collect();
            self.schemas
                .insert(component(full), json!({ "type": "string", "enum": names }));
        }
        Ok(reference(full))
    }

    fn scalar(&mut self, f: &FieldDescriptorProto) -> Result<Value, String> {
        Ok(match f.r#type() {
            Type::Double | Type::Float => json!({ "type": "number" }),
            Type::Int32 | Type::Sint32 | Type::Sfixed32 => {
                json!({ "type": "integer", "format": "int32" })
            }
            Type::Uint32 | Type::Fixed32 => json!({ "type": "integer", "minimum": 0 }),
            // 64-bit integers are strings in proto3 JSON (numbers are read too).
            Type::Int64 | Type::Sint64 | Type::Sfixed64 | Type::Uint64 | Type::Fixed64 => {
                json!({ "type": ["string", "integer"], "format": "int64" })
            }
            Type::Bool => json!({ "type": "boolean" }),
            Type::String => json!({ "type": "string" }),
            Type::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
            Type::Enum => self.enumeration(f.type_name())?,
            Type::Message | Type::Group => self.message(f.type_name())?,
        })
    }

    fn field(&mut self, f: &FieldDescriptorProto) -> Result<Value, String> {
        if f.label() != Label::Repeated {
            return self.scalar(f);
        }
        // A map is a repeated entry message with `map_entry` set.
        let entry = self
            .types
            .messages
            .get(f.type_name().trim_start_matches('.'))
            .filter(|m| m.options.as_ref().and_then(|o| o.map_entry) == Some(true))
            .cloned();
        match entry {
            Some(entry) => {
                let value = entry
                    .field
                    .iter()
                    .find(|v| v.name() == "value")
                    .ok_or("a map entry without a value")?;
                Ok(json!({ "type": "object", "additionalProperties": self.scalar(value)? }))
            }
            None => Ok(json!({ "type": "array", "items": self.scalar(f)? })),
        }
    }
}

/// The RPC's name: unique per route (no RPC is on two routes).
fn operation_id(rpc: &str) -> String {
    rpc.rsplit('/').next().unwrap_or(rpc).to_string()
}

/// The document.
pub(crate) fn document() -> Result<Value, String> {
    let types = Types::load()?;
    let mut b = Builder {
        types: &types,
        schemas: Map::new(),
        done: BTreeSet::new(),
    };
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for r in ROUTES {
        let mut params = Vec::new();
        for seg in r.path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                params.push(json!({ "name": name, "in": "path", "required": true,
                                    "schema": { "type": "string" } }));
            }
        }
        for (name, ty, about) in r.query {
            params.push(json!({ "name": name, "in": "query", "required": false,
                                "description": about, "schema": { "type": ty } }));
        }
        let ok = match r.answer {
            Answer::Message(m) => json!({
                "description": "OK",
                "content": { "application/json": { "schema": b.message(m)? } },
            }),
            Answer::Events(m) => json!({
                "description": format!("server-sent events; each `data` is a {} (JSON); an `error` event carries an Error", component(m)),
                "content": { "text/event-stream": {
                    "schema": { "type": "string" },
                    "x-event-data": b.message(m)?,
                } },
            }),
        };
        let mut op = json!({
            "operationId": operation_id(r.rpc),
            "summary": r.summary,
            "description": format!("Calls `{}`.", r.rpc),
            "parameters": params,
            "responses": {
                "200": ok,
                "default": {
                    "description": "an error: the gRPC status code's name, its message, and the request field it names (INVALID_ARGUMENT)",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
                },
            },
        });
        if let Some(body) = r.body {
            op["requestBody"] = json!({
                "required": false,
                "content": { "application/json": { "schema": b.message(body)? } },
            });
        }
        paths
            .entry(r.path)
            .or_default()
            .insert(r.verb.as_str().to_string(), op);
    }
    let mut schemas = b.schemas;
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": { "type": "string", "description": "the gRPC status code's name, e.g. INVALID_ARGUMENT" },
                "message": { "type": "string" },
                "field": { "type": ["string", "null"], "description": "the request field a rule names" },
            },
        }),
    );
    Ok(json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tutti",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A render farm for text-to-music generation: the gRPC API's methods over HTTP and JSON (proto3 JSON mapping with the .proto field names). Generated from the route table and the protobuf descriptors.",
        },
        "servers": [{ "url": "/" }],
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer",
                "description": "an API key (tt_...), when the farm runs with TUTTI_AUTH=required" } },
            "schemas": schemas,
        },
    }))
}

/// `GET /v1/openapi.json` (built once).
pub(super) async fn serve() -> Result<Response, ApiError> {
    static DOC: OnceLock<Result<Value, String>> = OnceLock::new();
    match DOC.get_or_init(document) {
        Ok(doc) => json(doc),
        Err(e) => Err(ApiError(tonic::Status::internal(format!(
            "building the OpenAPI document: {e}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_and_every_message_it_carries_is_described() {
        let doc = document().expect("document");
        let paths = doc["paths"].as_object().expect("paths");
        for r in ROUTES {
            assert!(
                paths[r.path][r.verb.as_str()].is_object(),
                "{} {}",
                r.verb.as_str(),
                r.path
            );
        }
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        let job = &schemas["Job"]["properties"];
        assert_eq!(job["queue_position"]["type"], "integer");
        assert_eq!(job["created_at"]["format"], "date-time");
        assert_eq!(job["state"]["$ref"], "#/components/schemas/JobState");
        let req = &schemas["SubmitGenerationRequest"]["properties"];
        assert_eq!(req["labels"]["type"], "object");
        assert_eq!(req["seed"]["type"], json!(["string", "integer"]));
        assert_eq!(req["init_audio"]["contentEncoding"], "base64");
        assert!(schemas["JobEvent.Kind"]["enum"]
            .as_array()
            .expect("kinds")
            .contains(&json!("KIND_SNAPSHOT")));
        // Every reference resolves.
        let text = doc.to_string();
        for part in text.split("#/components/schemas/").skip(1) {
            let name = part.split('"').next().expect("name");
            assert!(schemas.contains_key(name), "dangling $ref {name}");
        }
    }
}
