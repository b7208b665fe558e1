"""YAML loading and ``${VAR}`` expansion for the gateway config.

The original expanded variables in the raw text before parsing, so a value
could inject YAML syntax and unset variables silently stayed literal. Here the
text is composed into a node tree first and only scalar *values* are expanded,
so an environment value is always exactly one scalar.
"""

import math
import re
import types
from collections.abc import Mapping
from typing import Annotated, Any, Union, get_args, get_origin

import msgspec
import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "ByteSize", "ConfigError", "ConfigLoader", "ConvertContext", "Duration", "compose_config",
    "convert_struct", "is_null", "line_of", "parse_duration", "parse_size",
]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_NULL_TAG = "tag:yaml.org,2002:null"

# `$${...}` is an escape for a literal `${...}`; it is matched first so the
# inner `${` is never treated as a reference.
_VAR_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """Invalid configuration. The message names the source line and key path."""

    def __init__(
        self, message: str, *, path: str = "", line: int | None = None, source: str = ""
    ) -> None:
        self.path = path
        self.line = line
        self.source = source
        self.reason = message
        prefix = ""
        if source:
            prefix = f"{source}:{line}: " if line is not None else f"{source}: "
        where = f"{path}: " if path else ""
        super().__init__(f"{prefix}{where}{message}")


# --- scalar parsers -----------------------------------------------------------

_DURATION = "duration"  # Annotated marker: Go duration string, stored as seconds
_SIZE = "size"  # Annotated marker: byte count, int or "10MiB"
Duration = Annotated[float, _DURATION]
ByteSize = Annotated[int, _SIZE]

_DUR_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
              "m": 60.0, "h": 3600.0}
_DUR_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value: str | int | float) -> float:
    """Go ``time.ParseDuration`` syntax ("1h30m", "300ms"); numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"invalid duration {value!r}")
        return float(value)
    s = value.strip()
    sign = -1.0 if s.startswith("-") else 1.0
    body = s[1:] if s[:1] in "+-" else s
    if body == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(body):
        m = _DUR_PART.match(body, pos)
        if m is None:
            break
        total += float(m.group(1)) * _DUR_UNITS[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise ValueError(f"invalid duration {value!r}")
    return sign * total


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2,
               "mb": 1000**2, "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_size(value: str | int) -> int:
    """Byte count from an int or a size string ("10MiB", "512KiB", "1MB")."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, int):
        return value
    m = _SIZE_RE.fullmatch(value.strip().lower())
    if m is None or m.group(2) not in _SIZE_UNITS:
        raise ValueError(f"invalid size {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])



class ConfigLoader(yaml.SafeLoader):
    """SafeLoader that records whether a scalar's tag was implicit.

    Only implicitly typed plain scalars may be re-resolved after expansion;
    an explicit ``!!str ${PORT}`` must stay a string.
    """

    # types-PyYAML annotates ``anchor`` as a dict; PyYAML passes the anchor name.
    def compose_scalar_node(self, anchor: str | None) -> ScalarNode:  # type: ignore[override]
        event = self.peek_event()  # type: ignore[no-untyped-call]
        implicit = event.tag is None or event.tag == "!"
        node: ScalarNode = super().compose_scalar_node(anchor)  # type: ignore[arg-type]
        node.implicit_tag = implicit  # type: ignore[attr-defined]
        return node


def line_of(node: Node | None) -> int | None:
    """1-based line where ``node`` starts."""
    if node is None or node.start_mark is None:
        return None
    return int(node.start_mark.line) + 1


def _expand_scalar(
    node: ScalarNode, env: Mapping[str, str], source: str, loader: ConfigLoader
) -> None:
    text = node.value
    if "${" not in text:
        return

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        # Shell semantics: `:-` also applies when the variable is set but empty.
        if default is not None:
            return value if value else default
        if value is None:
            line = line_of(node) or 0
            if node.style == "|":  # literal blocks keep newlines, so the offset is exact
                line += text.count("\n", 0, m.start()) + 1
            raise ConfigError(
                f"environment variable {name} is not set (use ${{{name}:-}} for an "
                "optional value)",
                line=line,
                source=source,
            )
        return value

    new = _VAR_RE.sub(repl, text)
    if new == text:
        return
    node.value = new
    if node.style is None and getattr(node, "implicit_tag", False):
        # Plain scalar: type it as if the value had been written literally.
        node.tag = loader.resolve(ScalarNode, new, (True, False))  # type: ignore[no-untyped-call]


def _expand(node: Node, env: Mapping[str, str], source: str, loader: ConfigLoader) -> None:
    # Aliases share node objects; expanding twice would re-interpret `$${X}`.
    seen: set[int] = set()
    stack: list[Node] = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, ScalarNode):
            _expand_scalar(n, env, source, loader)
        elif isinstance(n, SequenceNode):
            stack.extend(n.value)
        elif isinstance(n, MappingNode):
            # Keys are not expanded: only values may come from the environment.
            stack.extend(v for _, v in n.value)


def compose_config(
    text: str, env: Mapping[str, str], source: str
) -> tuple[Node | None, ConfigLoader]:
    """Parse ``text`` to an env-expanded node tree (None for an empty document)."""
    loader = ConfigLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = int(mark.line) + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {e.problem or e}", line=line, source=source) from e
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", source=source) from e
    if node is None:
        return None, loader
    _expand(node, env, source, loader)
    return node, loader


def mapping_items(
    node: MappingNode, loader: ConfigLoader, path: str, source: str
) -> list[tuple[Node, Node]]:
    """Key/value pairs with ``<<`` merges applied (explicit keys win).

    A key written twice in the same mapping is an error (the original's YAML
    library rejected it too); PyYAML would silently keep the last one.
    """
    cached: list[tuple[Node, Node]] | None = getattr(node, "flat_items", None)
    if cached is not None:  # shared through an alias, already flattened
        return cached
    seen: set[str] = set()
    for k, _ in node.value:
        if is_merge_key(k) or not isinstance(k, ScalarNode):
            continue
        if k.value in seen:
            key_path = f"{path}.{k.value}" if path else k.value
            raise ConfigError("key is defined twice", path=key_path, line=line_of(k),
                              source=source)
        seen.add(k.value)
    try:
        loader.flatten_mapping(node)
    except yaml.MarkedYAMLError as e:
        raise ConfigError(f"invalid merge: {e.problem}", path=path, line=line_of(node),
                          source=source) from e
    # Last occurrence wins, which after flattening means explicit over merged.
    items = list({id_key(k): (k, v) for k, v in node.value}.values())
    node.flat_items = items  # type: ignore[attr-defined]
    return items


def id_key(node: Node) -> str:
    return node.value if isinstance(node, ScalarNode) else f"<{id(node)}>"


def construct_scalar(node: ScalarNode, loader: ConfigLoader) -> Any:
    """Python value of a scalar using the safe constructors (int, bool, null...)."""
    # Called per tag rather than via construct_object, whose recursion
    # bookkeeping is left dirty when a constructor raises.
    fn = loader.yaml_constructors.get(node.tag)
    if fn is None:
        return node.value  # unknown tag: the caller reports a type error on the text
    try:
        return fn(loader, node)
    except (yaml.YAMLError, ValueError, TypeError):
        return node.value  # e.g. `!!int abc`


def is_merge_key(node: Node) -> bool:
    return node.tag == _MERGE_TAG


# --- node -> struct conversion ---------------------------------------------------


class ConvertContext:
    """Conversion state: warnings, and the line of every key path seen."""

    def __init__(
        self, loader: ConfigLoader, source: str, aliases: Mapping[type, Mapping[str, str]]
    ) -> None:
        self.loader = loader
        self.source = source
        self.aliases = aliases  # per struct: YAML key -> field name
        self.warnings: list[str] = []
        self.lines: dict[str, int | None] = {}

    def error(self, msg: str, path: str, node: Node | None) -> ConfigError:
        return ConfigError(msg, path=path, line=line_of(node), source=self.source)


def _show(node: Node) -> str:
    if isinstance(node, ScalarNode):
        return repr(node.value)
    return "a mapping" if isinstance(node, MappingNode) else "a list"


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


# Complex on purpose: one branch per YAML scalar form.
def _scalar(tp: Any, node: Node, path: str, ctx: ConvertContext) -> Any:  # noqa: C901
    marker = None
    if get_origin(tp) is Annotated:
        tp, marker = get_args(tp)[0], get_args(tp)[1]
    if not isinstance(node, ScalarNode):
        raise ctx.error(f"expected {marker or tp.__name__}, got {_show(node)}", path, node)
    if tp is str:
        # Any scalar is accepted as text (`api_key: 12345`), as the original did.
        return node.value
    value = construct_scalar(node, ctx.loader)
    try:
        if marker == _DURATION:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError
            return parse_duration(value)
        if marker == _SIZE:
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise ValueError
            return parse_size(value)
        if tp is bool:
            if isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"  # a quoted "${FLAG}"
            if isinstance(value, bool):
                return value
            raise ValueError
        if isinstance(value, bool):
            raise ValueError
        if tp is int:
            # Quoted numbers are accepted so `"${PORT}"`-style values work.
            num = int(value.strip()) if isinstance(value, str) else value
            if isinstance(num, float) and num.is_integer():
                num = int(num)
            if not isinstance(num, int):
                raise ValueError
            return num
        if tp is float:
            num = float(value.strip()) if isinstance(value, str) else value
            if not isinstance(num, int | float) or not math.isfinite(num):
                raise ValueError
            return float(num)
    except ValueError:
        pass
    if marker is not None:
        raise ctx.error(f"invalid {marker} {node.value!r}", path, node)
    raise ctx.error(f"expected {tp.__name__}, got {node.value!r}", path, node)


def _convert(tp: Any, node: Node, path: str, ctx: ConvertContext) -> Any:
    if get_origin(tp) in (types.UnionType, Union):
        # Optional[X]: null is None, anything else must be an X.
        args = [a for a in get_args(tp) if a is not type(None)]
        if is_null(node):
            return None
        tp = args[0]
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return convert_struct(tp, node, path, ctx)
    if get_origin(tp) is list:
        if not isinstance(node, SequenceNode):
            raise ctx.error(f"expected a list, got {_show(node)}", path, node)
        (item_tp,) = get_args(tp)
        out = []
        for i, n in enumerate(node.value):
            ctx.lines[f"{path}[{i}]"] = line_of(n)
            out.append(_convert(item_tp, n, f"{path}[{i}]", ctx))
        return out
    if get_origin(tp) is dict:
        if not isinstance(node, MappingNode):
            raise ctx.error(f"expected a mapping, got {_show(node)}", path, node)
        key_tp, value_tp = get_args(tp)
        mapping = {}
        for k, v in mapping_items(node, ctx.loader, path, ctx.source):
            key = _scalar(key_tp, k, path, ctx)
            mapping[key] = _convert(value_tp, v, f"{path}.{key}", ctx)
        return mapping
    return _scalar(tp, node, path, ctx)


def convert_struct(cls: type[msgspec.Struct], node: Node, path: str, ctx: ConvertContext) -> Any:
    return cls(**_struct_kwargs(cls, node, path, ctx))


def _struct_kwargs(cls: type, node: Node, path: str, ctx: ConvertContext) -> dict[str, Any]:
    if not isinstance(node, MappingNode):
        raise ctx.error(f"expected a mapping, got {_show(node)}", path, node)
    fields = {f.name: f for f in msgspec.structs.fields(cls)}
    aliases = ctx.aliases.get(cls, {})
    kwargs: dict[str, Any] = {}
    set_by: dict[str, str] = {}  # field name -> YAML key path that set it
    for knode, vnode in mapping_items(node, ctx.loader, path, ctx.source):
        key = str(knode.value) if isinstance(knode, ScalarNode) else _show(knode)
        key_path = f"{path}.{key}" if path else key
        name = aliases.get(key, key)
        ctx.lines[key_path] = line_of(vnode)
        if is_merge_key(knode) or name not in fields:
            ctx.warnings.append(f"unknown config key {key_path} (ignored)")
            continue
        if name in set_by:
            # `address` and `addr` both given: the canonical key wins.
            canon = f"{path}.{name}" if path else name
            ctx.warnings.append(f"{set_by[name]} and {key_path} both set; using {canon}")
            if key != name:
                continue
        set_by[name] = key_path
        if is_null(vnode):
            continue  # `key:` with no value keeps the default, as YAML nulls do in Go
        kwargs[name] = _convert(fields[name].type, vnode, key_path, ctx)
    for f in fields.values():
        if f.required and f.name not in kwargs:
            raise ctx.error(f"missing required key {f.name!r}", path, node)
    return kwargs
