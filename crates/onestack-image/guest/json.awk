# Prints one "path<TAB>value" line per scalar of a JSON document; object keys and array indexes
# are joined with "/". Enough JSON for meta_data.json (strings with escapes, nesting, arrays).
# Newlines inside values become spaces, so every value stays on one line.
BEGIN { RS = "\001" }
{ s = $0; n = length(s); pos = 1; value("") }
function ws() { while (pos <= n && index(" \t\r\n", substr(s, pos, 1)) > 0) pos++ }
function join(path, k) { return path == "" ? k : path "/" k }
function value(path,    c, k, i) {
  ws(); c = substr(s, pos, 1)
  if (c == "{") {
    pos++; ws()
    if (substr(s, pos, 1) == "}") { pos++; return }
    while (pos <= n) {
      ws(); k = str(); ws(); pos++
      value(join(path, k)); ws()
      c = substr(s, pos, 1); pos++
      if (c != ",") return
    }
  } else if (c == "[") {
    pos++; ws(); i = 0
    if (substr(s, pos, 1) == "]") { pos++; return }
    while (pos <= n) {
      value(join(path, i)); i++; ws()
      c = substr(s, pos, 1); pos++
      if (c != ",") return
    }
  } else if (c == "\"") {
    print path "\t" str()
  } else {
    k = ""
    # index() rather than a bracket expression: busybox awk mishandles "\]" inside brackets.
    while (pos <= n && index(",}] \t\r\n", substr(s, pos, 1)) == 0) { k = k substr(s, pos, 1); pos++ }
    print path "\t" k
  }
}
function str(    out, c, e) {
  out = ""; pos++
  while (pos <= n) {
    c = substr(s, pos, 1); pos++
    if (c == "\"") return out
    if (c == "\\") {
      e = substr(s, pos, 1); pos++
      if (e == "n" || e == "r" || e == "t") out = out " "
      else if (e == "u") { out = out "?"; pos += 4 }
      else if (e == "b" || e == "f") out = out
      else out = out e
    } else if (c == "\n") out = out " "
    else out = out c
  }
  return out
}
