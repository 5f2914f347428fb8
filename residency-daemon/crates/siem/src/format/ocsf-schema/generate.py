#!/usr/bin/env python3
"""Generate ocsf-1.8.0-subset.json: the part of the OCSF 1.8.0 schema that
residency's OCSF encoder (../ocsf.rs) emits, resolved the way the OCSF schema
compiler resolves it, for the encoder's unit tests to validate against.

Source:  https://github.com/ocsf/ocsf-schema
Tag:     1.8.0
Commit:  6fa6499a0f8c9f449d342816e90e5f687c224b0a

Usage (Python 3.8 or later, standard library only):

    git clone --branch 1.8.0 --depth 1 https://github.com/ocsf/ocsf-schema
    python3 generate.py --schema ocsf-schema > ocsf-1.8.0-subset.json

or straight from a clone's git directory (checked against the commit above):

    python3 generate.py --git-dir ocsf-schema/.git > ocsf-1.8.0-subset.json

With `--compare compiled.json` it also compares the result with the output
of the official compiler (https://github.com/ocsf/ocsf-schema-compiler,
`ocsf-schema-compiler -i <schema dir>`, which needs Python 3.14) and exits 1
on any difference.

The resolution follows ocsf-schema-compiler 0.9.2 (compiler.py) for the base
schema without extensions:

1. `"$include"` in an item's attributes merges the included file's
   attributes under the item's own (the item wins). Attributes included from
   a profile (`"meta": "profile"`) are marked with that profile: they exist in
   an event only when its `metadata.profiles` names the profile. A profile's
   `annotations` fill keys the attribute does not set.
   `"$include"` inside one attribute merges that file under the attribute.
2. A dictionary attribute whose type is not one of the dictionary's `types`
   is an object attribute (`object_t` of that object).
3. `"extends"` (classes extend `base_event` through their category's class,
   objects extend objects) copies the parent and merges the child's
   attributes on top; attribute details merge key by key, `enum`s deep-merge.
4. A class's uid is `category_uid * 1000 + uid`; `class_uid` and
   `category_uid` get the one value of the class, and `type_uid` gets
   `class_uid * 100 + activity_id` for every `activity_id` (and 0).
5. Each attribute is the dictionary's definition with the class's or
   object's detail deep-merged on top; no `requirement` means optional.

Left out, since the encoder uses neither: extensions, and the `*_dt`
attributes the `datetime` profile adds beside every timestamp.

The output is data (attribute names, requirements, types, enum values and
captions), not code. OCSF is Copyright (c) OCSF a Series of LF Projects, LLC,
licensed under the Apache License 2.0; see README.md beside this file.
"""

import argparse
import copy
import json
import os
import subprocess
import sys
import tarfile
import tempfile

SOURCE_REPO = "https://github.com/ocsf/ocsf-schema"
TAG = "1.8.0"
COMMIT = "6fa6499a0f8c9f449d342816e90e5f687c224b0a"

# What the encoder emits. An object the encoder emits but that is missing
# here fails the tests ("not vendored"), so this list cannot silently lag.
CLASSES = ["network_activity", "detection_finding", "event_log_actvity"]
OBJECTS = [
    "actor",
    "analytic",
    "autonomous_system",
    "container",
    "device",
    "evidences",
    "file",
    "finding_info",
    "firewall_rule",
    "image",
    "location",
    "metadata",
    "network_connection_info",
    "network_endpoint",
    "object",
    "observable",
    "policy",
    "process",
    "product",
    "user",
]


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_items(root, sub):
    """Every JSON file under root/sub, by its "name"."""
    items = {}
    for dirpath, _dirs, files in os.walk(os.path.join(root, sub)):
        for name in sorted(files):
            if name.endswith(".json"):
                item = read_json(os.path.join(dirpath, name))
                items[item["name"]] = item
    return items


def deep_merge(dest, source):
    """compiler utils.deep_merge: dicts merge, anything else is replaced."""
    for key, value in source.items():
        if key in dest and isinstance(dest[key], dict) and isinstance(value, dict):
            deep_merge(dest[key], value)
        else:
            dest[key] = value


RANK = {None: 0, "optional": 1, "recommended": 2, "required": 3}


def merge_attribute_detail(dest, source):
    """compiler SchemaCompiler._merge_attribute_detail (without extensions)."""
    for key, value in source.items():
        if key not in dest:
            dest[key] = value
        elif value == dest[key]:
            pass
        elif key == "profiles":
            if value is None:
                dest["profiles"] = None
            else:
                dest["profiles"] = sorted(set(dest["profiles"] or []) | set(value))
        elif (
            key == "requirement"
            and source.get("profiles") is not None
            and "profiles" in dest
        ):
            # An attribute two profiles bring: the stronger requirement.
            dest[key] = max(dest[key], value, key=lambda r: RANK[r])
        elif isinstance(dest[key], dict) and isinstance(value, dict):
            deep_merge(dest[key], value)
        else:
            dest[key] = value


def merge_attributes(dest, source):
    for name, attribute in source.items():
        if name in dest:
            merge_attribute_detail(dest[name], attribute)
        else:
            dest[name] = attribute


def upgrade_profile(item):
    """A legacy single "profile" on an attribute becomes "profiles"."""
    for attribute in item.get("attributes", {}).values():
        if isinstance(attribute, dict) and "profile" in attribute:
            profile = attribute.pop("profile")
            attribute["profiles"] = None if profile is None else [profile]


def resolve_includes(root, item):
    attributes = item.setdefault("attributes", {})
    if "$include" in attributes:
        include = attributes.pop("$include")
        for path in [include] if isinstance(include, str) else include:
            included = read_json(os.path.join(root, path))
            merged = copy.deepcopy(included.get("attributes", {}))
            if included.get("meta") == "profile":
                for attribute in merged.values():
                    attribute["profiles"] = [included["name"]]
            for key, value in included.get("annotations", {}).items():
                for attribute in merged.values():
                    attribute.setdefault(key, value)
            merge_attributes(merged, item["attributes"])
            item["attributes"] = merged
    for name, attribute in list(item["attributes"].items()):
        if isinstance(attribute, dict) and "$include" in attribute:
            path = attribute.pop("$include")
            merged = copy.deepcopy(read_json(os.path.join(root, path)))
            deep_merge(merged, attribute)
            item["attributes"][name] = merged


def resolve_extends(items, name, done):
    if name in done:
        return
    item = items[name]
    parent_name = item.get("extends")
    if parent_name:
        if parent_name not in items:
            sys.exit(f'"{name}" extends undefined "{parent_name}"')
        resolve_extends(items, parent_name, done)
        merged = copy.deepcopy(items[parent_name])
        for key, value in item.items():
            if key == "attributes":
                attributes = merged.setdefault("attributes", {})
                merge_attributes(attributes, value)
            elif key == "profiles":
                merged["profiles"] = sorted(set(merged.get("profiles", [])) | set(value))
            else:
                merged[key] = value
        items[name] = merged
    done.add(name)


def caption_of(items, item):
    while "caption" not in item and item.get("extends") in items:
        item = items[item["extends"]]
    return item.get("caption", item.get("name"))


def observable_type_ids(classes, objects, dictionary):
    """The observable object's type_id values that the schema defines by
    marking types, attributes and objects "observable" (compiler
    _observables_from_* and _update_observable_enum); taken before extends,
    as the compiler does, so that each is counted once."""
    found = {}
    for kind, items in (("Class", classes), ("Object", objects)):
        for item in items.values():
            caption = caption_of(items, item)
            if kind == "Object" and "observable" in item:
                found[str(item["observable"])] = {"caption": caption}
            for name, attribute in item.get("attributes", {}).items():
                if "observable" in attribute:
                    found[str(attribute["observable"])] = {"caption": f"{caption} {kind}: {name}"}
            if kind == "Class":
                for path, type_id in item.get("observables", {}).items():
                    found[str(type_id)] = {"caption": f"{caption} {kind}: {path}"}
    for group in (dictionary["types"]["attributes"], dictionary["attributes"]):
        for detail in group.values():
            if "observable" in detail:
                found[str(detail["observable"])] = {"caption": detail.get("caption", "")}
    return found


def compile_schema(root):
    version = read_json(os.path.join(root, "version.json"))["version"]
    if version != TAG:
        sys.exit(f"schema version is {version}, expected {TAG}")
    categories = read_json(os.path.join(root, "categories.json"))["attributes"]
    dictionary = read_json(os.path.join(root, "dictionary.json"))
    types = dictionary["types"]["attributes"]
    classes = read_items(root, "events")
    objects = read_items(root, "objects")
    profiles = sorted(read_items(root, "profiles"))

    for item in list(classes.values()) + list(objects.values()):
        upgrade_profile(item)
        resolve_includes(root, item)

    observables = observable_type_ids(classes, objects, dictionary)

    dict_attributes = dictionary["attributes"]
    for attribute in dict_attributes.values():
        if attribute["type"] not in types:
            attribute["object_type"] = attribute["type"]
            attribute["type"] = "object_t"

    done = set()
    for name in list(classes):
        resolve_extends(classes, name, done)
    done = set()
    for name in list(objects):
        resolve_extends(objects, name, done)

    for cls in classes.values():
        if "uid" not in cls:
            continue
        category = categories.get(cls.get("category"))
        category_uid = category["uid"] if category else 0
        cls["uid"] = category_uid * 1000 + cls["uid"]
        cls["category_uid"] = category_uid
        attributes = cls["attributes"]
        caption = cls.get("caption", "UNKNOWN")
        activities = attributes["activity_id"]["enum"]
        type_enum = {
            str(cls["uid"] * 100 + int(k)): {"caption": f"{caption}: {v.get('caption')}"}
            for k, v in activities.items()
        }
        type_enum.setdefault(str(cls["uid"] * 100), {"caption": f"{caption}: Unknown"})
        attributes.setdefault("type_uid", {})["enum"] = type_enum
        attributes.setdefault("class_uid", {})["enum"] = {
            str(cls["uid"]): {"caption": caption}
        }
        if category:
            attributes.setdefault("category_uid", {})["enum"] = {
                str(category_uid): {"caption": category["caption"]}
            }

    def finish(item):
        finished = {}
        for name, attribute in item.get("attributes", {}).items():
            if name not in dict_attributes:
                sys.exit(f'"{item["name"]}" attribute "{name}" is not in the dictionary')
            merged = copy.deepcopy(dict_attributes[name])
            deep_merge(merged, attribute)
            merged.setdefault("requirement", "optional")
            if merged.get("requirement") is None:
                merged["requirement"] = "optional"
            finished[name] = merged
        return finished

    objects["observable"]["attributes"]["type_id"]["enum"].update(observables)

    for cls in classes.values():
        cls["attributes"] = finish(cls)
    for obj in objects.values():
        obj["attributes"] = finish(obj)
    return classes, objects, types, profiles


def compact_attribute(attribute):
    out = {"requirement": attribute["requirement"], "type": attribute["type"]}
    if attribute["type"] == "object_t":
        out["object_type"] = attribute["object_type"]
    if attribute.get("is_array"):
        out["is_array"] = True
    if attribute.get("enum"):
        out["enum"] = {
            k: v.get("caption", "")
            for k, v in sorted(attribute["enum"].items(), key=lambda kv: int(kv[0]))
        }
    if attribute.get("sibling"):
        out["sibling"] = attribute["sibling"]
    if attribute.get("profiles"):
        out["profiles"] = sorted(attribute["profiles"])
    if "@deprecated" in attribute:
        out["deprecated"] = True
    return out


def compact_item(item, with_uids):
    out = {}
    if with_uids:
        out["uid"] = item["uid"]
        out["category_uid"] = item["category_uid"]
    if item.get("constraints"):
        out["constraints"] = item["constraints"]
    out["attributes"] = {
        name: compact_attribute(attribute)
        for name, attribute in sorted(item["attributes"].items())
        # The datetime profile's *_dt siblings: not resolved here (see above).
        if "datetime" not in (attribute.get("profiles") or [])
    }
    return out


def subset(classes, objects, types, profiles):
    used_types = set()
    out_classes = {n: compact_item(classes[n], True) for n in CLASSES}
    out_objects = {n: compact_item(objects[n], False) for n in OBJECTS}
    for item in list(out_classes.values()) + list(out_objects.values()):
        for attribute in item["attributes"].values():
            used_types.add(attribute["type"])
    out_types = {}
    for name in sorted(used_types - {"object_t"}):
        t = types[name]
        out_types[name] = {
            k: t[k] for k in ("type", "range", "max_len", "values") if k in t
        }
    return {
        "source": {"repository": SOURCE_REPO, "tag": TAG, "commit": COMMIT},
        "notice": "OCSF schema data, Copyright (c) OCSF a Series of LF Projects, LLC, "
        "Apache License 2.0. Generated by generate.py; do not edit.",
        "version": TAG,
        "profiles": profiles,
        "classes": out_classes,
        "objects": out_objects,
        "types": out_types,
    }


def compare(mine, compiled):
    """Differences between our subset and the official compiler's output."""
    theirs = subset(
        compiled["classes"],
        compiled["objects"],
        compiled["dictionary"]["types"]["attributes"],
        sorted(compiled["profiles"]),
    )
    diffs = []

    def walk(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if k not in a:
                    diffs.append(f"{path}.{k}: only in the compiler's output")
                elif k not in b:
                    diffs.append(f"{path}.{k}: only in ours")
                else:
                    walk(a[k], b[k], f"{path}.{k}")
        elif a != b:
            diffs.append(f"{path}: ours {a!r}, compiler's {b!r}")

    for key in ("classes", "objects", "types", "profiles"):
        walk(mine[key], theirs[key], key)
    return diffs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--schema", help="an ocsf-schema checkout at tag " + TAG)
    source.add_argument("--git-dir", help="an ocsf-schema git directory holding " + COMMIT)
    parser.add_argument("--compare", help="official compiler output to compare with")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.schema
        if args.git_dir:
            commit = subprocess.run(
                ["git", "--git-dir", args.git_dir, "rev-parse", f"{COMMIT}^{{commit}}"],
                check=True, capture_output=True, text=True,
            ).stdout.strip()
            if commit != COMMIT:
                sys.exit(f"{args.git_dir} has no commit {COMMIT}")
            archive = os.path.join(tmp, "schema.tar")
            with open(archive, "wb") as f:
                subprocess.run(
                    ["git", "--git-dir", args.git_dir, "archive", COMMIT],
                    check=True, stdout=f,
                )
            root = os.path.join(tmp, "schema")
            with tarfile.open(archive) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(root, filter="data")
                else:
                    tar.extractall(root)
        out = subset(*compile_schema(root))

    if args.compare:
        diffs = compare(out, read_json(args.compare))
        for d in diffs:
            print(d, file=sys.stderr)
        if diffs:
            sys.exit(f"{len(diffs)} difference(s) from the compiler's output")
        print("identical to the compiler's output", file=sys.stderr)

    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
