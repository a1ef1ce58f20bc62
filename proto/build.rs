// Compiles the API with the protoc that ships inside `protoc-bin-vendored`, so that a fresh
// machine builds without installing protoc; $PROTOC, when set, wins. Then writes the door checks
// (`src/checks.rs`) of every message from the descriptors protoc produced, so that a field added
// to the .proto is checked without new code.
use std::fmt::Write as _;
use std::path::PathBuf;

use heck::{ToSnakeCase, ToUpperCamelCase};
use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet, MessageOptions,
};

/// The package whose messages get checks; its Rust module is `crate::v1`.
const PACKAGE: &str = "leasehold.v1";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=leasehold");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let include = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("leasehold_descriptor.bin");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        .build_client(std::env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .file_descriptor_set_path(&descriptor_path)
        .compile_with_config(
            config,
            &[PathBuf::from("leasehold/v1/leasehold.proto")],
            &[PathBuf::from("."), include],
        )?;
    let set = FileDescriptorSet::decode(std::fs::read(&descriptor_path)?.as_slice())?;
    std::fs::write(out_dir.join("checks.rs"), checks(&set))?;
    Ok(())
}

/// What the door checks of a value of a field's type.
#[derive(Clone, Copy, PartialEq)]
enum Check {
    /// A string: no NUL.
    Text,
    /// A `double`: finite.
    Double,
    /// A `float`: finite, widened to check.
    Float,
    /// A message with a [`CheckInput`] impl (one of the package's, or `Struct`, `Value`,
    /// `ListValue`).
    Message,
    /// Nothing to check: integers, booleans, enums, bytes (`bytea` stores NUL), timestamps.
    Nothing,
}

/// `impl CheckInput` for every message of [`PACKAGE`], nested ones included.
fn checks(set: &FileDescriptorSet) -> String {
    let mut out = String::from("// Written by build.rs from the descriptors. Do not edit.\n");
    for file in set.file.iter().filter(|f| f.package() == PACKAGE) {
        for message in &file.message_type {
            message_checks(&mut out, &[], message);
        }
    }
    out
}

/// The impl of `message`, nested in the messages `outer` (outermost first), then those of its
/// nested messages.
fn message_checks(out: &mut String, outer: &[&str], message: &DescriptorProto) {
    let mut body = String::new();
    // Fields in declaration order, a oneof where its first member is declared: the violation
    // reported is the first one a reader of the .proto would find.
    let mut oneofs_done = Vec::new();
    for field in &message.field {
        let oneof = field.oneof_index.filter(|_| !field.proto3_optional());
        match oneof {
            None => field_check(&mut body, message, field),
            Some(index) if !oneofs_done.contains(&index) => {
                oneofs_done.push(index);
                let members: Vec<&FieldDescriptorProto> = message
                    .field
                    .iter()
                    .filter(|f| f.oneof_index == Some(index) && !f.proto3_optional())
                    .collect();
                let name = message.oneof_decl[usize::try_from(index).expect("an index")].name();
                oneof_check(&mut body, outer, message, name, &members);
            }
            Some(_) => {}
        }
    }
    let rust_type = rust_path(outer, message.name());
    let at = if body.is_empty() { "_at" } else { "at" };
    writeln!(
        out,
        "impl CheckInput for {rust_type} {{\n    fn check_at(&self, {at}: &Path<'_>) -> Result<(), Violation> {{\n{body}        Ok(())\n    }}\n}}\n"
    )
    .expect("writing to a String");
    let mut nested_outer = outer.to_vec();
    nested_outer.push(message.name());
    for nested in message.nested_type.iter().filter(|m| !is_map_entry(m)) {
        message_checks(out, &nested_outer, nested);
    }
}

/// The checks of a field that is not a oneof member.
fn field_check(out: &mut String, message: &DescriptorProto, field: &FieldDescriptorProto) {
    let name = field.name();
    let access = format!("self.{}", rust_ident(&name.to_snake_case()));
    if let Some(entry) = map_entry(message, field) {
        map_check(out, name, &access, entry);
        return;
    }
    let (check, optional) = check_of(field);
    if check == Check::Nothing {
        return;
    }
    let at = format!("at.field({name:?})");
    if field.label() == Label::Repeated {
        let each = value_check(check, "x", &format!("{at}.index(i)"));
        writeln!(
            out,
            "        for (i, x) in {access}.iter().enumerate() {{ {each} }}"
        )
    } else if optional {
        let one = value_check(check, "x", &at);
        writeln!(out, "        if let Some(x) = &{access} {{ {one} }}")
    } else {
        let one = value_check(check, "x", &at);
        writeln!(out, "        {{ let x = &{access}; {one} }}")
    }
    .expect("writing to a String");
}

/// The checks of a map field: each key, and each value at its key.
fn map_check(out: &mut String, name: &str, access: &str, entry: &DescriptorProto) {
    let (key, value) = (&entry.field[0], &entry.field[1]);
    let (value_check_kind, _) = check_of(value);
    let string_key = key.r#type() == Type::String;
    if !string_key && value_check_kind == Check::Nothing {
        return;
    }
    let mut each = String::new();
    if string_key {
        each.push_str("key(k, &field)?; ");
    } else {
        // Only a key that is text can break a rule; others are written into the path as text.
        each.push_str("let k = &k.to_string(); ");
    }
    if value_check_kind != Check::Nothing {
        each.push_str(&value_check(value_check_kind, "x", "field.key(k)"));
    }
    let each_entry = if value_check_kind == Check::Nothing {
        format!("k in {access}.keys()")
    } else {
        format!("(k, x) in &{access}")
    };
    writeln!(
        out,
        "        {{ let field = at.field({name:?}); for {each_entry} {{ {each} }} }}"
    )
    .expect("writing to a String");
}

/// The checks of a oneof: its member that is set, at the member's name.
fn oneof_check(
    out: &mut String,
    outer: &[&str],
    message: &DescriptorProto,
    oneof: &str,
    members: &[&FieldDescriptorProto],
) {
    // prost names the oneof's enum after the oneof, with `OneOf` added when a nested type of the
    // message already has that name, in a module named after the message.
    let mut type_name = oneof.to_upper_camel_case();
    let conflict = message
        .nested_type
        .iter()
        .map(DescriptorProto::name)
        .chain(message.enum_type.iter().map(EnumDescriptorProto::name))
        .any(|n| n.to_upper_camel_case() == type_name);
    if conflict {
        type_name.push_str("OneOf");
    }
    let module = rust_module(outer, message.name());
    let mut arms = String::new();
    let mut all = true;
    for member in members {
        let (check, _) = check_of(member);
        if check == Check::Nothing {
            all = false;
            continue;
        }
        let variant = rust_ident(&member.name().to_upper_camel_case());
        let one = value_check(check, "x", &format!("at.field({:?})", member.name()));
        writeln!(
            arms,
            "            {module}::{type_name}::{variant}(x) => {{ {one} }}"
        )
        .expect("writing to a String");
    }
    if arms.is_empty() {
        return;
    }
    if !all {
        arms.push_str("            _ => {}\n");
    }
    let access = format!("self.{}", rust_ident(&oneof.to_snake_case()));
    writeln!(out, "        if let Some(member) = &{access} {{\n          match member {{\n{arms}          }}\n        }}")
        .expect("writing to a String");
}

/// The statement that checks the value `x` (a reference) at the path expression `at`.
fn value_check(check: Check, x: &str, at: &str) -> String {
    match check {
        Check::Text => format!("text({x}, &{at})?;"),
        Check::Double => format!("number(*{x}, &{at})?;"),
        Check::Float => format!("number(f64::from(*{x}), &{at})?;"),
        Check::Message => format!("{x}.check_at(&{at})?;"),
        Check::Nothing => String::new(),
    }
}

/// What a field's values need, and whether prost wraps a singular one in an `Option`.
fn check_of(field: &FieldDescriptorProto) -> (Check, bool) {
    let optional = field.proto3_optional();
    match field.r#type() {
        Type::String => (Check::Text, optional),
        Type::Double => (Check::Double, optional),
        Type::Float => (Check::Float, optional),
        Type::Message | Type::Group => (message_check(field.type_name()), true),
        _ => (Check::Nothing, optional),
    }
}

/// What a message type's values need. prost maps the wrappers of scalars to the scalars.
fn message_check(type_name: &str) -> Check {
    match type_name {
        ".google.protobuf.Struct" | ".google.protobuf.Value" | ".google.protobuf.ListValue" => {
            Check::Message
        }
        ".google.protobuf.StringValue" => Check::Text,
        ".google.protobuf.DoubleValue" => Check::Double,
        ".google.protobuf.FloatValue" => Check::Float,
        ".google.protobuf.Timestamp"
        | ".google.protobuf.Duration"
        | ".google.protobuf.Empty"
        | ".google.protobuf.BoolValue"
        | ".google.protobuf.BytesValue"
        | ".google.protobuf.Int32Value"
        | ".google.protobuf.Int64Value"
        | ".google.protobuf.UInt32Value"
        | ".google.protobuf.UInt64Value" => Check::Nothing,
        own if own.starts_with(&format!(".{PACKAGE}.")) => Check::Message,
        // A type nobody wrote a check for would let its text through unchecked: refuse to build.
        other => panic!(
            "build.rs has no door check for {other} (used in {PACKAGE}); add one to src/checks.rs \
             and to message_check"
        ),
    }
}

fn is_map_entry(message: &DescriptorProto) -> bool {
    message
        .options
        .as_ref()
        .is_some_and(MessageOptions::map_entry)
}

/// The map entry type of `field`, if it is a map field.
fn map_entry<'m>(
    message: &'m DescriptorProto,
    field: &FieldDescriptorProto,
) -> Option<&'m DescriptorProto> {
    if field.label() != Label::Repeated || field.r#type() != Type::Message {
        return None;
    }
    let short = field.type_name().rsplit('.').next()?;
    message
        .nested_type
        .iter()
        .find(|m| m.name() == short && is_map_entry(m))
}

/// The module prost puts a message's nested types in: `crate::v1::outer::inner`.
fn rust_module(outer: &[&str], name: &str) -> String {
    let mut path = String::from("crate::v1");
    for m in outer.iter().chain(std::iter::once(&name)) {
        path.push_str("::");
        path.push_str(&rust_ident(&m.to_snake_case()));
    }
    path
}

/// The Rust type prost generates for a message: `crate::v1::outer::Inner`.
fn rust_path(outer: &[&str], name: &str) -> String {
    let mut path = String::from("crate::v1");
    for m in outer {
        path.push_str("::");
        path.push_str(&rust_ident(&m.to_snake_case()));
    }
    path.push_str("::");
    path.push_str(&rust_ident(&name.to_upper_camel_case()));
    path
}

/// An identifier as prost writes it: raw for a keyword, `_` added where raw is not allowed.
fn rust_ident(ident: &str) -> String {
    match ident {
        "as" | "break" | "const" | "continue" | "else" | "enum" | "false" | "fn" | "for" | "if"
        | "impl" | "in" | "let" | "loop" | "match" | "mod" | "move" | "mut" | "pub" | "ref"
        | "return" | "static" | "struct" | "trait" | "true" | "type" | "unsafe" | "use"
        | "where" | "while" | "dyn" | "abstract" | "become" | "box" | "do" | "final" | "macro"
        | "override" | "priv" | "typeof" | "unsized" | "virtual" | "yield" | "async" | "await"
        | "try" | "gen" => format!("r#{ident}"),
        "_" | "super" | "self" | "Self" | "extern" | "crate" => format!("{ident}_"),
        s if s.starts_with(|c: char| c.is_numeric()) => format!("_{ident}"),
        _ => ident.to_owned(),
    }
}
