#!/usr/bin/env node
// Check a Grafana dashboard JSON file against Grafana's published schema types.
//
//   node check.mjs DASHBOARD.json [--print-ts]
//
// The dashboard is written out as TypeScript, one constant per panel typed by the
// panel's `type` (schema.ts), and compiled with tsc's strict checks: every problem is
// printed as `<where in the JSON>: <what tsc says>` and the exit status is 1. Exit 0
// and "ok" when the dashboard fits the schema; 2 when the file cannot be read.
// --print-ts prints the generated TypeScript instead.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const HERE = dirname(fileURLToPath(import.meta.url));
const GENERATED = join(HERE, 'dashboard.gen.ts');

/** JSON as TypeScript source, remembering which JSON path starts on which line. */
class Writer {
  constructor() {
    this.lines = [];
    this.paths = new Map(); // 1-based line -> JSON path
  }

  line(text, path) {
    this.lines.push(text);
    if (path !== undefined) this.paths.set(this.lines.length, path);
  }

  /** `value` at `path`, the first line starting with `prefix`, ending with `suffix`. */
  value(value, path, indent, prefix, suffix) {
    const pad = '  '.repeat(indent);
    if (value === null || typeof value !== 'object') {
      this.line(`${pad}${prefix}${JSON.stringify(value)}${suffix}`, path);
    } else if (Array.isArray(value)) {
      this.line(`${pad}${prefix}[`, path);
      value.forEach((item, i) => this.value(item, `${path}[${i}]`, indent + 1, '', ','));
      this.line(`${pad}]${suffix}`);
    } else {
      this.line(`${pad}${prefix}{`, path);
      for (const [key, item] of Object.entries(value)) {
        const keyPath = /^[A-Za-z_]\w*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`;
        this.value(item, keyPath, indent + 1, `${JSON.stringify(key)}: `, ',');
      }
      this.line(`${pad}}${suffix}`);
    }
  }

  /** An object whose `replaced` keys are written as given TypeScript expressions. */
  object(value, path, prefix, suffix, replaced) {
    this.line(`${prefix}{`, path);
    for (const [key, item] of Object.entries(value)) {
      if (key in replaced) {
        this.line(`  ${JSON.stringify(key)}: ${replaced[key]},`, `${path}.${key}`);
      } else {
        this.value(item, `${path}.${key}`, 1, `${JSON.stringify(key)}: `, ',');
      }
    }
    this.line(`}${suffix}`);
  }
}

function panelLabel(panel, path) {
  const id = panel && typeof panel === 'object' ? panel.id : undefined;
  const title = panel && typeof panel === 'object' ? panel.title : undefined;
  return `${path} (panel ${id} ${JSON.stringify(title)})`;
}

/** The dashboard as TypeScript; `labels` maps a panel's JSON path to a readable name. */
export function generate(dashboard) {
  const writer = new Writer();
  const labels = new Map();
  writer.line("import type { Dashboard, PanelTypes } from './schema';");
  let count = 0;

  function panelConst(panel, path) {
    labels.set(path, panelLabel(panel, path));
    const name = `panel${count++}`;
    const replaced = {};
    if (Array.isArray(panel?.panels)) {
      replaced.panels = `[${panel.panels.map((p, i) => panelConst(p, `${path}.panels[${i}]`)).join(', ')}]`;
    }
    const type = `PanelTypes[${JSON.stringify(String(panel?.type))}]`;
    if (panel && typeof panel === 'object' && !Array.isArray(panel)) {
      writer.object(panel, path, `const ${name}: ${type} = `, ';', replaced);
    } else {
      writer.value(panel, path, 0, `const ${name}: ${type} = `, ';');
    }
    return name;
  }

  const panels = Array.isArray(dashboard.panels)
    ? dashboard.panels.map((panel, i) => panelConst(panel, `panels[${i}]`))
    : null;
  writer.object(
    dashboard,
    '',
    'export const dashboard: Dashboard = ',
    ';',
    panels ? { panels: `[${panels.join(', ')}]` } : {},
  );
  return { source: writer.lines.join('\n') + '\n', paths: writer.paths, labels };
}

/** Where line `line` is in the dashboard: its JSON path, panels named. */
function where(line, paths, labels) {
  for (let l = line; l >= 1; l--) {
    const path = paths.get(l);
    if (path === undefined) continue;
    const panel = [...labels.keys()]
      .filter((p) => path === p || path.startsWith(`${p}.`))
      .sort((a, b) => b.length - a.length)[0];
    if (panel === undefined) return path.replace(/^\./, '') || '(dashboard)';
    const rest = path.slice(panel.length).replace(/^\./, '');
    return rest ? `${labels.get(panel)}: ${rest}` : labels.get(panel);
  }
  return '(dashboard)';
}

/** tsc's diagnostics for the dashboard, as `where: message` lines. */
export function check(dashboard) {
  const { source, paths, labels } = generate(dashboard);
  const config = ts.getParsedCommandLineOfConfigFile(join(HERE, 'tsconfig.json'), {}, {
    ...ts.sys,
    onUnRecoverableConfigFileDiagnostic: (d) => {
      throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n'));
    },
  });
  const host = ts.createCompilerHost(config.options);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (fileName, language, ...rest) =>
    fileName === GENERATED
      ? ts.createSourceFile(fileName, source, language, true)
      : getSourceFile(fileName, language, ...rest);
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (fileName) => fileName === GENERATED || fileExists(fileName);
  const program = ts.createProgram([...config.fileNames, GENERATED], config.options, host);
  const problems = [];
  for (const diagnostic of ts.getPreEmitDiagnostics(program)) {
    // A long object type printed in full says less than the property named before it.
    const message = ts
      .flattenDiagnosticMessageText(diagnostic.messageText, ' ')
      .replace(/'\{[^']{60,}\}'/g, "'{...}'");
    if (diagnostic.file?.fileName !== GENERATED || diagnostic.start === undefined) {
      problems.push(`checker: ${diagnostic.file?.fileName ?? ''} ${message}`);
      continue;
    }
    const { line } = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start);
    problems.push(`${where(line + 1, paths, labels)}: ${message}`);
  }
  return problems;
}

function main(argv) {
  const [file, ...flags] = argv;
  if (!file || flags.some((f) => f !== '--print-ts')) {
    console.error('usage: node check.mjs DASHBOARD.json [--print-ts]');
    return 2;
  }
  let dashboard;
  try {
    dashboard = JSON.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    console.error(`${file}: ${error.message}`);
    return 2;
  }
  if (flags.includes('--print-ts')) {
    process.stdout.write(generate(dashboard).source);
    return 0;
  }
  const problems = check(dashboard);
  for (const problem of problems) console.log(problem);
  if (problems.length) {
    console.log(`${file}: ${problems.length} schema problem(s)`);
    return 1;
  }
  console.log(`${file}: ok`);
  return 0;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  process.exitCode = main(process.argv.slice(2));
}
