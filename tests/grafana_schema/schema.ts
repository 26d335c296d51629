/**
 * The shape of grafana/pylontech.json, composed from Grafana's published schema types
 * (@grafana/schema: the dashboard kind and each panel plugin's panelcfg types).
 *
 * check.mjs turns the dashboard into TypeScript (one typed constant per panel) and
 * compiles it against these types with tsc: a misspelled field, a wrong type or an option
 * the panel plugin does not have is a compile error (TypeScript's excess-property check on
 * object literals).
 *
 * Where the published types are looser than Grafana (the veneer `Panel` takes any
 * `options`, `targets` are `Record<string, unknown>`), they are narrowed here to the
 * plugin's own types. Two shapes are not in @grafana/schema and are declared here from
 * Grafana's Prometheus data source (@grafana/prometheus, which cannot be installed
 * without React): its query and its annotation fields.
 */
import type * as raw from '@grafana/schema/dist/esm/raw/dashboard/x/Dashboard_types.gen';
import type * as common from '@grafana/schema';
import type * as bargauge from '@grafana/schema/dist/esm/raw/composable/bargauge/panelcfg/x/BarGaugePanelCfg_types.gen';
import type * as stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';
import type * as statetimeline from '@grafana/schema/dist/esm/raw/composable/statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen';
import type * as timeseries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';

/** A type as it is written in JSON: string enums become their string values. Optional
 * and required fields stay as the schema has them. */
export type Json<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Json<U>>
      : T extends object
        ? { [K in keyof T]: Json<T[K]> }
        : T;

/** Like Json, but every field optional at every depth: panel options and custom field
 * config, which Grafana completes from the plugin's defaults. */
export type PartialJson<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<PartialJson<U>>
      : T extends object
        ? { [K in keyof T]?: PartialJson<T[K]> }
        : T;

/** @grafana/prometheus dataquery.ts `Prometheus` plus PromQuery's `interval`. */
export interface PromQuery extends common.DataQuery {
  editorMode?: 'code' | 'builder';
  exemplar?: boolean;
  expr: string;
  format?: 'time_series' | 'table' | 'heatmap';
  instant?: boolean;
  interval?: string;
  intervalFactor?: number;
  legendFormat?: string;
  range?: boolean;
}

/** The fields Grafana's Prometheus data source reads from an annotation besides the
 * query (annotations.ts, processEvents). */
interface PromAnnotationFields {
  tagKeys?: string;
  textFormat?: string;
  titleFormat?: string;
  useValueForTime?: boolean;
}

type FieldConfigSource<Custom> = Json<Omit<raw.FieldConfigSource, 'defaults'>> & {
  defaults: Json<Omit<raw.FieldConfig, 'custom'>> & { custom?: Custom };
};

/** A panel of plugin `Type` with that plugin's options and custom field config. */
type PluginPanel<Type extends string, Options, Custom> = Json<
  Omit<raw.Panel, 'type' | 'options' | 'fieldConfig' | 'targets' | 'datasource'>
> & {
  type: Type;
  datasource?: Json<raw.DataSourceRef>;
  options?: PartialJson<Options>;
  fieldConfig?: FieldConfigSource<PartialJson<Custom>>;
  targets?: Array<Json<PromQuery>>;
};

/** Stat and bar gauge have no custom field config. */
type NoCustom = Record<never, never>;

export type BarGaugePanel = PluginPanel<'bargauge', bargauge.Options, NoCustom>;
export type StatPanel = PluginPanel<'stat', stat.Options, NoCustom>;
export type StateTimelinePanel = PluginPanel<
  'state-timeline',
  statetimeline.Options,
  statetimeline.FieldConfig
>;
export type TimeSeriesPanel = PluginPanel<'timeseries', timeseries.Options, timeseries.FieldConfig>;
export type VisualisationPanel = BarGaugePanel | StatPanel | StateTimelinePanel | TimeSeriesPanel;

export type RowPanel = Json<Omit<raw.RowPanel, 'panels'>> & { panels: VisualisationPanel[] };

/** check.mjs picks the type of each panel by its `type`. */
export interface PanelTypes {
  bargauge: BarGaugePanel;
  row: RowPanel;
  stat: StatPanel;
  'state-timeline': StateTimelinePanel;
  timeseries: TimeSeriesPanel;
}

export type AnnotationQuery = Json<Omit<raw.AnnotationQuery, 'target' | 'datasource'>> &
  PromAnnotationFields & {
    datasource: Json<raw.DataSourceRef>;
    target?: Json<PromQuery>;
  };

export type Dashboard = Json<Omit<raw.Dashboard, 'panels' | 'annotations' | 'templating'>> & {
  panels: Array<VisualisationPanel | RowPanel>;
  annotations: { list: AnnotationQuery[] };
  templating: { list: Array<Json<raw.VariableModel>> };
};
