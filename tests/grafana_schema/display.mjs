#!/usr/bin/env node
// Values as Grafana displays them, by Grafana's own display processor (@grafana/data):
// unit, decimals, value mappings and thresholds of a field config.
//
//   echo '[{"config": {"unit": "watt", "decimals": 0}, "values": [2499]}]' | node display.mjs
//   [[{"text":"2 kW","color":"#73BF69"}]]
//
// Input on stdin: a list of {config: fieldConfig.defaults, values: [numbers]}; output on
// stdout: for each, the list of {text, color} (text with prefix and suffix, color as CSS).
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

// @grafana/data asks the browser for its locale (date formats) when it loads its units.
globalThis.navigator ??= { language: 'en-US', languages: ['en-US'] };
// Its ES module build does not load in Node (a named import from CommonJS moment).
const { FieldType, createTheme, formattedValueToString, getDisplayProcessor } =
  createRequire(import.meta.url)('@grafana/data');

const theme = createTheme();

/** `values` displayed with the field config `config`. */
export function display(config, values) {
  const field = { name: 'value', type: FieldType.number, config, values };
  const processor = getDisplayProcessor({ field, theme });
  return values.map((value) => {
    const shown = processor(value);
    return { text: formattedValueToString(shown), color: theme.visualization.getColorByName(shown.color ?? '') };
  });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const requests = JSON.parse(readFileSync(0, 'utf8'));
  process.stdout.write(JSON.stringify(requests.map((r) => display(r.config ?? {}, r.values))) + '\n');
}
