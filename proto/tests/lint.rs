//! buf lint's STANDARD rules, where they apply, over the compiled descriptors, so that the API's
//! names stay what a client author expects without installing buf. Each rule keeps buf's name.
//!
//! Deliberately not applied: SERVICE_SUFFIX (services are named after their resource, `Runs`, as
//! in the AIPs; a rename would change every method's path) and the strict form of
//! RPC_RESPONSE_STANDARD_NAME: a method may answer with the package's resource message (AIP-131:
//! `GetRun` returns `Run`), as long as its name ends with the resource's (`CancelRun`, `DecideGate`);
//! a server-streaming method may stream any resource of the package (`WatchRun`, `RunEvent`).

use std::collections::HashMap;

use prost::Message as _;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet};

/// The well-known types that come into the set with the imports: not ours to lint.
const IMPORTED: &str = "google.";

/// Violations of the current API that are accepted, as `lint` writes them: none.
const KNOWN: &[&str] = &[];

/// Every rule broken in the set's own files, as `RULE subject: what is wrong`.
fn lint(set: &FileDescriptorSet) -> Vec<String> {
    let mut found = Vec::new();
    for file in set
        .file
        .iter()
        .filter(|f| !f.package().starts_with(IMPORTED))
    {
        lint_file(file, &mut found);
    }
    found
}

fn lint_file(file: &FileDescriptorProto, found: &mut Vec<String>) {
    let mut flag = |rule: &str, subject: &str, what: String| {
        found.push(format!("{rule} {subject}: {what}"));
    };
    let package = file.package();
    let (directory, base) = file.name().rsplit_once('/').unwrap_or(("", file.name()));
    if directory != package.replace('.', "/") {
        flag(
            "PACKAGE_DIRECTORY_MATCH",
            file.name(),
            format!("not in {}/", package.replace('.', "/")),
        );
    }
    if !package.split('.').all(is_lower_snake) {
        flag(
            "PACKAGE_LOWER_SNAKE_CASE",
            package,
            "not lower_snake_case".into(),
        );
    }
    if !package.rsplit('.').next().is_some_and(is_version) {
        flag(
            "PACKAGE_VERSION_SUFFIX",
            package,
            "does not end in a version (v1, v1beta1)".into(),
        );
    }
    if !base.strip_suffix(".proto").is_some_and(is_lower_snake) {
        flag(
            "FILE_LOWER_SNAKE_CASE",
            file.name(),
            "not lower_snake_case.proto".into(),
        );
    }
    if !file.public_dependency.is_empty() {
        flag("IMPORT_NO_PUBLIC", file.name(), "has public imports".into());
    }
    if !file.weak_dependency.is_empty() {
        flag("IMPORT_NO_WEAK", file.name(), "has weak imports".into());
    }
    let mut messages = Vec::new();
    for m in &file.message_type {
        walk_messages(m, "", &mut messages);
    }
    let mut enums: Vec<(String, &EnumDescriptorProto)> = file
        .enum_type
        .iter()
        .map(|e| (e.name().to_owned(), e))
        .collect();
    for (name, m) in &messages {
        if !is_pascal(m.name()) {
            flag("MESSAGE_PASCAL_CASE", name, "not PascalCase".into());
        }
        for field in &m.field {
            if !is_lower_snake(field.name()) {
                flag(
                    "FIELD_LOWER_SNAKE_CASE",
                    &format!("{name}.{}", field.name()),
                    "not lower_snake_case".into(),
                );
            }
        }
        for (index, oneof) in m.oneof_decl.iter().enumerate() {
            // A proto3 `optional` field sits in a oneof protoc names `_field` itself, as buf's
            // lint knows: not the author's to name.
            let synthetic = m.field.iter().any(|f| {
                f.proto3_optional()
                    && f.oneof_index.and_then(|i| usize::try_from(i).ok()) == Some(index)
            });
            if !synthetic && !is_lower_snake(oneof.name()) {
                flag(
                    "ONEOF_LOWER_SNAKE_CASE",
                    &format!("{name}.{}", oneof.name()),
                    "not lower_snake_case".into(),
                );
            }
        }
        enums.extend(
            m.enum_type
                .iter()
                .map(|e| (format!("{name}.{}", e.name()), e)),
        );
    }
    for (name, e) in &enums {
        lint_enum(name, e, &mut flag);
    }

    // Which RPCs take each message, and the package's resources: its messages that are neither
    // requests nor responses.
    let mut takers: HashMap<&str, Vec<&str>> = HashMap::new();
    for service in &file.service {
        if !is_pascal(service.name()) {
            flag(
                "SERVICE_PASCAL_CASE",
                service.name(),
                "not PascalCase".into(),
            );
        }
        for method in &service.method {
            let rpc = method.name();
            let subject = format!("{}.{rpc}", service.name());
            if !is_pascal(rpc) {
                flag("RPC_PASCAL_CASE", &subject, "not PascalCase".into());
            }
            let request = local_name(method.input_type(), package);
            let response = local_name(method.output_type(), package);
            if request != Some(format!("{rpc}Request").as_str()) {
                flag(
                    "RPC_REQUEST_STANDARD_NAME",
                    &subject,
                    format!("takes {}, not {rpc}Request", method.input_type()),
                );
            }
            // A unary RPC answers with the resource it names (`CancelRun` with a `Run`); a
            // streaming one may stream any resource of the package (`WatchRun`, `RunEvent`s).
            let resource = response.is_some_and(|r| {
                !r.ends_with("Request")
                    && !r.ends_with("Response")
                    && (method.server_streaming() || (rpc.len() > r.len() && rpc.ends_with(r)))
            });
            if response != Some(format!("{rpc}Response").as_str()) && !resource {
                flag(
                    "RPC_RESPONSE_STANDARD_NAME",
                    &subject,
                    format!(
                        "returns {}, neither {rpc}Response nor a resource its name ends with",
                        method.output_type()
                    ),
                );
            }
            takers
                .entry(request.unwrap_or(method.input_type()))
                .or_default()
                .push(rpc);
        }
    }
    for (name, _) in messages.iter().filter(|(n, _)| n.ends_with("Request")) {
        let rpcs = takers.remove(name.as_str()).unwrap_or_default();
        if rpcs.len() != 1 {
            flag(
                "RPC_REQUEST_RESPONSE_UNIQUE",
                name,
                format!("taken by {} RPCs {rpcs:?}, not one", rpcs.len()),
            );
        }
    }
    for (name, rpcs) in takers.into_iter().filter(|(_, rpcs)| rpcs.len() > 1) {
        flag(
            "RPC_REQUEST_RESPONSE_UNIQUE",
            name,
            format!("taken by {} RPCs {rpcs:?}, not one", rpcs.len()),
        );
    }
}

fn lint_enum(name: &str, e: &EnumDescriptorProto, flag: &mut impl FnMut(&str, &str, String)) {
    if !is_pascal(e.name()) {
        flag("ENUM_PASCAL_CASE", name, "not PascalCase".into());
    }
    let prefix = format!("{}_", upper_snake(e.name()));
    for value in &e.value {
        let subject = format!("{name}.{}", value.name());
        if !is_upper_snake(value.name()) {
            flag(
                "ENUM_VALUE_UPPER_SNAKE_CASE",
                &subject,
                "not UPPER_SNAKE_CASE".into(),
            );
        }
        if !value.name().starts_with(&prefix) {
            flag(
                "ENUM_VALUE_PREFIX",
                &subject,
                format!("does not start with {prefix}"),
            );
        }
    }
    match e.value.first() {
        Some(zero) if zero.number() == 0 => {
            if zero.name() != format!("{prefix}UNSPECIFIED") {
                flag(
                    "ENUM_ZERO_VALUE_SUFFIX",
                    name,
                    format!("zero value {} is not {prefix}UNSPECIFIED", zero.name()),
                );
            }
        }
        _ => flag(
            "ENUM_FIRST_VALUE_ZERO",
            name,
            "the first value is not 0".into(),
        ),
    }
}

/// Every message with its dotted name within the file, nested ones included; map entries are
/// protoc's, not ours.
fn walk_messages<'m>(
    m: &'m DescriptorProto,
    scope: &str,
    out: &mut Vec<(String, &'m DescriptorProto)>,
) {
    if m.options
        .as_ref()
        .is_some_and(prost_types::MessageOptions::map_entry)
    {
        return;
    }
    let name = if scope.is_empty() {
        m.name().to_owned()
    } else {
        format!("{scope}.{}", m.name())
    };
    for nested in &m.nested_type {
        walk_messages(nested, &name, out);
    }
    out.push((name, m));
}

/// `Run` for `.leasehold.v1.Run`; `None` for a type of another package.
fn local_name<'t>(type_name: &'t str, package: &str) -> Option<&'t str> {
    type_name
        .strip_prefix('.')?
        .strip_prefix(package)?
        .strip_prefix('.')
}

fn is_pascal(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase()) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

fn is_lower_snake(s: &str) -> bool {
    is_snake(s, |c| c.is_ascii_lowercase())
}

fn is_upper_snake(s: &str) -> bool {
    is_snake(s, |c| c.is_ascii_uppercase())
}

/// Words of `letter`s and digits, each word starting with a `letter` in the first one, joined
/// by single underscores.
fn is_snake(s: &str, letter: fn(char) -> bool) -> bool {
    s.starts_with(letter)
        && s.split('_')
            .all(|w| !w.is_empty() && w.chars().all(|c| letter(c) || c.is_ascii_digit()))
}

/// `RUN_STATUS` for `RunStatus`, `HTTP_METHOD` for `HTTPMethod`.
fn upper_snake(pascal: &str) -> String {
    let chars: Vec<char> = pascal.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let starts_word = i > 0
            && c.is_ascii_uppercase()
            && (!chars[i - 1].is_ascii_uppercase()
                || chars.get(i + 1).is_some_and(char::is_ascii_lowercase));
        if starts_word {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// `v1`, `v2beta1`, `v1alpha`.
fn is_version(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('v') else {
        return false;
    };
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (major, rest) = rest.split_at(digits);
    let stability = rest
        .strip_prefix("alpha")
        .or_else(|| rest.strip_prefix("beta"));
    !major.is_empty()
        && (rest.is_empty() || stability.is_some_and(|n| n.chars().all(|c| c.is_ascii_digit())))
}

#[test]
fn the_api_follows_the_lint_rules() {
    let set = FileDescriptorSet::decode(leasehold_proto::FILE_DESCRIPTOR_SET).expect("descriptors");
    assert!(
        set.file.iter().any(|f| f.package() == "leasehold.v1"),
        "the API is linted"
    );
    assert_eq!(
        lint(&set),
        KNOWN,
        "fix the .proto, or agree the exception and list it in KNOWN"
    );
}

mod checker {
    //! The checker itself: a small API that passes, and one bad copy of it per rule.

    use prost_types::{
        DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
        FileDescriptorProto, FileDescriptorSet, MessageOptions, MethodDescriptorProto,
        OneofDescriptorProto, ServiceDescriptorProto,
    };

    use super::{lint, upper_snake};

    fn message(name: &str, fields: &[&str]) -> DescriptorProto {
        DescriptorProto {
            name: Some(name.into()),
            field: fields
                .iter()
                .map(|f| FieldDescriptorProto {
                    name: Some((*f).into()),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn rpc(name: &str, request: &str, response: &str) -> MethodDescriptorProto {
        MethodDescriptorProto {
            name: Some(name.into()),
            input_type: Some(format!(".shop.v1.{request}")),
            output_type: Some(format!(".shop.v1.{response}")),
            ..Default::default()
        }
    }

    fn good() -> FileDescriptorProto {
        FileDescriptorProto {
            name: Some("shop/v1/shop.proto".into()),
            package: Some("shop.v1".into()),
            message_type: vec![
                message("Order", &["order_id", "line2"]),
                message("GetOrderRequest", &["order_id"]),
                message("CancelOrderRequest", &["order_id"]),
                message("ListOrdersRequest", &["page_size"]),
                message("ListOrdersResponse", &["orders"]),
            ],
            enum_type: vec![EnumDescriptorProto {
                name: Some("HTTPOrderState".into()),
                value: ["UNSPECIFIED", "OPEN"]
                    .iter()
                    .zip(0..)
                    .map(|(v, n)| EnumValueDescriptorProto {
                        name: Some(format!("HTTP_ORDER_STATE_{v}")),
                        number: Some(n),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            service: vec![ServiceDescriptorProto {
                name: Some("Orders".into()),
                method: vec![
                    rpc("GetOrder", "GetOrderRequest", "Order"),
                    rpc("CancelOrder", "CancelOrderRequest", "Order"),
                    rpc("ListOrders", "ListOrdersRequest", "ListOrdersResponse"),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn lint_one(file: FileDescriptorProto) -> Vec<String> {
        lint(&FileDescriptorSet { file: vec![file] })
    }

    /// `lint` passes the good API, and flags `rule` once `spoil` has changed it (a bad name may
    /// break more than one rule).
    fn check(rule: &str, spoil: impl FnOnce(&mut FileDescriptorProto)) {
        assert_eq!(
            lint_one(good()),
            Vec::<String>::new(),
            "the good API passes"
        );
        let mut bad = good();
        spoil(&mut bad);
        let found = lint_one(bad);
        assert!(
            found.iter().any(|v| v.starts_with(&format!("{rule} "))),
            "{rule}: {found:#?}"
        );
    }

    #[test]
    fn each_rule_flags_a_bad_api() {
        check("PACKAGE_DIRECTORY_MATCH", |f| {
            f.name = Some("shop/shop.proto".into());
        });
        check("FILE_LOWER_SNAKE_CASE", |f| {
            f.name = Some("shop/v1/Shop.proto".into());
        });
        check("IMPORT_NO_PUBLIC", |f| f.public_dependency = vec![0]);
        check("IMPORT_NO_WEAK", |f| f.weak_dependency = vec![0]);
        check("MESSAGE_PASCAL_CASE", |f| {
            f.message_type[0]
                .nested_type
                .push(message("line_item", &[]));
        });
        check("FIELD_LOWER_SNAKE_CASE", |f| {
            f.message_type[0].field[0].name = Some("orderId".into());
        });
        check("FIELD_LOWER_SNAKE_CASE", |f| {
            f.message_type[0].field[0].name = Some("order__id".into());
        });
        check("ONEOF_LOWER_SNAKE_CASE", |f| {
            f.message_type[0].oneof_decl.push(OneofDescriptorProto {
                name: Some("Kind".into()),
                ..Default::default()
            });
        });
        check("ENUM_PASCAL_CASE", |f| {
            let mut e = f.enum_type[0].clone();
            e.name = Some("HTTP_ORDER_STATE".into());
            f.message_type[0].enum_type.push(e);
        });
        check("ENUM_VALUE_UPPER_SNAKE_CASE", |f| {
            f.enum_type[0].value[1].name = Some("HTTP_ORDER_STATE_Open".into());
        });
        check("ENUM_VALUE_PREFIX", |f| {
            f.enum_type[0].value[1].name = Some("ORDER_STATE_OPEN".into());
        });
        check("ENUM_ZERO_VALUE_SUFFIX", |f| {
            f.enum_type[0].value[0].name = Some("HTTP_ORDER_STATE_NONE".into());
        });
        check("ENUM_FIRST_VALUE_ZERO", |f| f.enum_type[0].value.swap(0, 1));
        check("SERVICE_PASCAL_CASE", |f| {
            f.service[0].name = Some("orders".into());
        });
        check("RPC_PASCAL_CASE", |f| {
            f.service[0].method[1].name = Some("cancel_Order".into());
            f.message_type[2].name = Some("cancel_OrderRequest".into());
        });
        check("RPC_REQUEST_STANDARD_NAME", |f| {
            f.service[0].method[1].input_type = Some(".shop.v1.GetOrderRequest".into());
        });
        check("RPC_REQUEST_STANDARD_NAME", |f| {
            f.service[0].method[1].input_type = Some(".google.protobuf.Empty".into());
        });
        check("RPC_RESPONSE_STANDARD_NAME", |f| {
            f.service[0].method[2].output_type = Some(".shop.v1.Order".into());
        });
        check("RPC_RESPONSE_STANDARD_NAME", |f| {
            f.service[0].method[0].output_type = Some(".shop.v1.ListOrdersResponse".into());
        });
        check("RPC_RESPONSE_STANDARD_NAME", |f| {
            f.service[0].method[0].server_streaming = Some(true);
            f.service[0].method[0].output_type = Some(".shop.v1.ListOrdersResponse".into());
        });
        check("RPC_REQUEST_RESPONSE_UNIQUE", |f| {
            f.message_type.push(message("ShipOrderRequest", &[]));
        });
    }

    #[test]
    fn the_package_is_lower_snake_and_versioned() {
        for package in ["shop", "shop.vnext", "shop.v", "shop.v1gamma"] {
            check("PACKAGE_VERSION_SUFFIX", |f| {
                f.name = Some(format!("{}/shop.proto", package.replace('.', "/")));
                f.package = Some(package.into());
                rename_package(f, package);
            });
        }
        check("PACKAGE_LOWER_SNAKE_CASE", |f| {
            f.name = Some("Shop/v1/shop.proto".into());
            f.package = Some("Shop.v1".into());
            rename_package(f, "Shop.v1");
        });
    }

    fn rename_package(f: &mut FileDescriptorProto, package: &str) {
        for m in &mut f.service[0].method {
            for t in [&mut m.input_type, &mut m.output_type] {
                *t = t
                    .as_ref()
                    .map(|t| t.replace(".shop.v1.", &format!(".{package}.")));
            }
        }
    }

    #[test]
    fn map_entries_are_protocs_and_not_linted() {
        let mut f = good();
        let mut entry = message("labels_entry", &["Key", "value"]);
        entry.options = Some(MessageOptions {
            map_entry: Some(true),
            ..Default::default()
        });
        f.message_type[0].nested_type.push(entry);
        f.message_type[0].field[1].name = Some("Labels".into());
        assert_eq!(
            lint_one(f),
            ["FIELD_LOWER_SNAKE_CASE Order.Labels: not lower_snake_case"]
        );
    }

    #[test]
    fn enum_prefixes_split_words_and_acronyms() {
        assert_eq!(upper_snake("RunStatus"), "RUN_STATUS");
        assert_eq!(upper_snake("HTTPOrderState"), "HTTP_ORDER_STATE");
        assert_eq!(upper_snake("Decision"), "DECISION");
        assert_eq!(upper_snake("V2Thing"), "V2_THING");
    }
}
