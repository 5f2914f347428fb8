//! The `OpenAPI` 3.1 document, generated from the route table.

use serde_json::{Map, Value, json};

use super::{
    params::Param,
    routes::{JSON, ROUTES, Route},
};

/// The document for every route in [`ROUTES`].
#[must_use]
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let item = paths
            .entry(route.path)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(item) = item {
            item.insert(route.method.lower().to_owned(), operation(route));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "residency",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The local REST API of the residency daemon: the decisions it made \
                            (flows), the violations they add up to, the data-flow map, the \
                            policy versions, and the signed evidence. Read only, except for \
                            acknowledging and resolving violations, which the evidence chain \
                            records. No endpoint changes policy.\n\nOn 127.0.0.1 (api.listen) \
                            every route but /healthz needs `Authorization: Bearer <token>`, the \
                            token in api.token_file. On the unix socket (api.socket) the peer \
                            must be root. Every error is `{\"error\": \"...\"}`, naming what was \
                            wrong."
        },
        "tags": [
            { "name": "flows", "description": "Decisions and the data-flow map" },
            { "name": "violations", "description": "Breaches of policy and their lifecycle" },
            { "name": "evidence", "description": "Policy versions, checkpoints, keys and exports" },
            { "name": "health", "description": "Liveness, readiness and metrics" },
            { "name": "meta", "description": "This document" }
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token in api.token_file (TCP). On the unix socket the \
                                    peer's uid is checked instead."
                }
            },
            "schemas": schemas(),
        },
        "security": [{ "bearer": [] }],
    })
}

fn operation(route: &Route) -> Value {
    let mut parameters: Vec<Value> = route
        .path_params
        .iter()
        .map(|p| parameter(p, "path"))
        .collect();
    parameters.extend(route.query.iter().map(|p| parameter(p, "query")));
    let mut responses = Map::new();
    responses.insert(
        "200".to_owned(),
        json!({
            "description": route.reply.description,
            "content": { route.reply.media: { "schema": schema_ref(route.reply.schema) } }
        }),
    );
    let auth = if route.public {
        &[][..]
    } else {
        &[
            (401u16, "Missing or invalid bearer token (TCP)."),
            (403u16, "The peer is not root (unix socket)."),
        ][..]
    };
    for (status, description) in auth {
        responses.insert(status.to_string(), error_response(description, "Error"));
    }
    for answer in route.errors {
        responses.insert(
            answer.status.to_string(),
            error_response(answer.description, answer.schema),
        );
    }
    // Every route refuses query parameters it does not take.
    responses
        .entry("400")
        .or_insert_with(|| error_response("A query parameter this route does not take.", "Error"));
    let mut op = json!({
        "operationId": format!("{:?}", route.endpoint),
        "tags": [route.tag],
        "summary": route.summary,
        "parameters": parameters,
        "responses": responses,
    });
    if !route.description.is_empty() {
        op["description"] = json!(route.description);
    }
    if route.public {
        op["security"] = json!([]);
    }
    if let Some(body) = route.body {
        op["requestBody"] = json!({
            "required": true,
            "content": { JSON: { "schema": schema_ref(body) } }
        });
    }
    op
}

fn parameter(p: &Param, location: &str) -> Value {
    json!({
        "name": p.name,
        "in": location,
        "required": location == "path",
        "description": p.description,
        "schema": p.kind.schema(),
    })
}

fn error_response(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { JSON: { "schema": schema_ref(schema) } }
    })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

#[expect(
    clippy::too_many_lines,
    reason = "one JSON literal: every schema, side by side"
)]
fn schemas() -> Value {
    let time = json!({ "type": "string", "format": "date-time" });
    let seq = json!({ "type": "integer", "format": "int64", "minimum": 0 });
    let count = json!({ "type": "integer", "format": "int64", "minimum": 0 });
    let text = json!({ "type": "string" });
    let transition = json!({
        "type": "object",
        "required": ["at", "by", "note", "seq"],
        "properties": {
            "at": time,
            "by": { "type": "string", "description": "`token` (TCP) or `uid:N` (socket)" },
            "note": text,
            "seq": { "type": "integer", "description": "The chain record of the change" }
        }
    });
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": { "error": { "type": "string", "description": "What was wrong, naming the parameter, header or field" } }
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": { "status": { "const": "ok" } }
        },
        "Ready": {
            "type": "object",
            "required": ["ready", "checks"],
            "properties": {
                "ready": { "type": "boolean" },
                "checks": {
                    "type": "object",
                    "properties": {
                        "kernel_programs_attached": { "type": "boolean" },
                        "evidence_store_writable": { "type": "boolean" }
                    }
                },
                "error": { "type": "string", "description": "Which check failed (absent when ready)" }
            }
        },
        "Text": { "type": "string" },
        "Binary": { "type": "string", "contentMediaType": "application/x-tar" },
        "Object": { "type": "object" },
        "StoredRecord": {
            "type": "object",
            "required": ["seq", "hash", "record"],
            "properties": {
                "seq": seq,
                "hash": { "type": "string", "description": "Chain hash, hex" },
                "record": { "type": "object", "description": "The record, as written: ECS field names (@timestamp, event, network, destination, process, rule, residency; for a flow from a Kubernetes pod, container.id/name/image.name and orchestrator.namespace, orchestrator.resource.type pod, .name, .id (the pod UID) and .label (key:value)). A followed flow names itself in residency.flow.id; its totals records (event.action flow-update, flow-end) carry source.bytes/packets (sent), destination.bytes/packets (received), network.bytes/packets, event.start/end/duration and residency.flow.{stage, calls, established, connect_ns, tcp_state, delta}" },
                "totals": schema_ref("FlowTotals")
            }
        },
        "FlowTotals": {
            "type": "object",
            "description": "What a followed flow has moved, from its newest totals record",
            "required": ["flow_id", "bytes_out", "bytes_in", "packets_out", "packets_in", "calls", "ended", "last_seq", "updated"],
            "properties": {
                "flow_id": { "type": "string", "description": "residency.flow.id: <boot>-<socket cookie>-<n>" },
                "bytes_out": count,
                "bytes_in": count,
                "packets_out": count,
                "packets_in": count,
                "calls": { "type": "integer", "format": "int64", "minimum": 0, "description": "Calls the decision covered: repeated datagrams to the same destination are counted here" },
                "ended": { "type": "boolean", "description": "The socket was closed or turned to another flow" },
                "last_seq": seq,
                "updated": time
            }
        },
        "RecordPage": {
            "type": "object",
            "required": ["items"],
            "properties": {
                "items": { "type": "array", "items": schema_ref("StoredRecord") },
                "next": { "type": "integer", "description": "Pass as `cursor` for the next page; absent on the last page" }
            }
        },
        "Violation": {
            "type": "object",
            "required": ["id", "state", "verdict", "tenants", "destination", "count", "first_seen", "last_seen", "first_seq", "last_seq", "nis2"],
            "properties": {
                "id": { "type": "integer", "format": "int64" },
                "state": { "type": "string", "enum": ["open", "acknowledged", "resolved"] },
                "verdict": { "type": "string", "enum": ["flagged", "blocked"] },
                "workload": text,
                "role": text,
                "namespace": { "type": "string", "description": "The Kubernetes namespace of the violating flows' pods" },
                "pod": { "type": "string", "description": "The pod of the first occurrence" },
                "tenants": { "type": "array", "items": text },
                "destination": {
                    "type": "object",
                    "properties": {
                        "ip": text,
                        "port": { "type": "integer" },
                        "country": text,
                        "name": text
                    }
                },
                "rule": text,
                "transfer_basis": text,
                "count": count,
                "first_seen": time,
                "last_seen": time,
                "first_seq": seq,
                "last_seq": seq,
                "nis2": {
                    "type": "object",
                    "description": "NIS2 Art. 23 deadlines from the moment of awareness",
                    "properties": {
                        "aware_at": time,
                        "early_warning_due": time,
                        "notification_due": time,
                        "final_report_due": time
                    }
                },
                "acknowledged": transition,
                "resolved": transition
            }
        },
        "ViolationPage": {
            "type": "object",
            "required": ["items"],
            "properties": {
                "items": { "type": "array", "items": schema_ref("Violation") },
                "next": { "type": "integer", "description": "Pass as `cursor` for the next page; absent on the last page" }
            }
        },
        "Note": {
            "type": "object",
            "required": ["note"],
            "additionalProperties": false,
            "properties": { "note": { "type": "string", "minLength": 1, "maxLength": 4096, "description": "Why (at most 4096 bytes)" } }
        },
        "TransferRow": {
            "type": "object",
            "required": ["transfer_basis", "provider", "flows", "allowed", "flagged", "blocked", "bytes_out", "bytes_in", "first_seen", "last_seen"],
            "properties": {
                "tenant": text,
                "role": text,
                "country": text,
                "transfer_basis": { "type": "string", "description": "eea, adequacy, dpf, scc, bcr, art49, local or none" },
                "provider": { "type": "string", "description": "The provider of the destination's endpoint catalog entry, or unlisted" },
                "service": { "type": "string", "description": "The service of that entry (absent for unlisted)" },
                "namespace": { "type": "string", "description": "The Kubernetes namespace the flows came from (absent for flows of no pod)" },
                "flows": count,
                "allowed": count,
                "flagged": count,
                "blocked": count,
                "bytes_out": { "type": "integer", "format": "int64", "minimum": 0, "description": "Bytes sent (IP packet lengths) on the days they moved; 0 where flows are not followed" },
                "bytes_in": { "type": "integer", "format": "int64", "minimum": 0, "description": "Bytes received, likewise" },
                "first_seen": time,
                "last_seen": time
            }
        },
        "TransferSummary": {
            "type": "object",
            "required": ["items"],
            "properties": { "items": { "type": "array", "items": schema_ref("TransferRow") } }
        },
        "PolicyVersion": {
            "type": "object",
            "required": ["hash", "loaded_at", "first_seq", "last_seq"],
            "properties": {
                "hash": { "type": "string", "description": "SHA-256 of the configuration" },
                "loaded_at": time,
                "first_seq": seq,
                "last_seq": seq,
                "source": text,
                "text": text
            }
        },
        "Policy": {
            "type": "object",
            "required": ["current", "history"],
            "properties": {
                "current": { "oneOf": [schema_ref("PolicyVersion"), { "type": "null" }] },
                "history": { "type": "array", "items": schema_ref("PolicyVersion") }
            }
        },
        "Checkpoint": {
            "type": "object",
            "required": ["seq", "head", "time", "reason", "key_id", "signature", "public_key"],
            "properties": {
                "seq": seq,
                "head": { "type": "string", "description": "Chain hash of record `seq`, hex" },
                "time": time,
                "reason": { "type": "string", "enum": ["records", "interval", "shutdown", "pruned", "requested"] },
                "key_id": text,
                "signature": { "type": "string", "description": "Ed25519, base64" },
                "public_key": { "type": "string", "description": "base64" }
            }
        },
        "PeriodProof": {
            "type": "object",
            "properties": {
                "first_seq": seq,
                "last_seq": seq,
                "before": { "$ref": "#/components/schemas/Checkpoint" },
                "after": { "$ref": "#/components/schemas/Checkpoint" }
            }
        },
        "PublicKey": {
            "type": "object",
            "required": ["public_key", "key_id"],
            "properties": {
                "public_key": { "type": "string", "description": "Ed25519, base64 of 32 bytes" },
                "key_id": { "type": "string", "description": "First 8 bytes of its SHA-256, hex" }
            }
        }
    })
}
