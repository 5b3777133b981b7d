/** The platform-neutral bot core, as the adapters use it. */
export type { DeliveryReceipt, PlatformAdapter, ProgressThrottle } from './adapter.ts';
export { throttleProgress } from './adapter.ts';
export type {
  BotCore,
  BotCoreOptions,
  CancelOutcome,
  CancelRequest,
  IndexOutcome,
  RefusalReason,
  SubmitOutcome,
} from './bot-core.ts';
export { createBotCore } from './bot-core.ts';
export type { PersistentAction } from './buttons.ts';
export {
  ACTION_LABELS,
  BUTTON_LABELS,
  buttonId,
  buttonsFor,
  PROGRESS_BUTTONS,
  parseButtonId,
  payloadForButton,
} from './buttons.ts';
export {
  CONFIG_RANGES,
  configPatch,
  describeConfig,
  GILL_SUBCOMMANDS,
  gillHelp,
  parseGillText,
  validateConfigChange,
} from './commands.ts';
export type { BuiltContext, ContextBudget } from './context.ts';
export { buildContext, DEFAULT_CONTEXT_BUDGET, estimateTokens } from './context.ts';
export type { AdapterDelivery } from './delivery.ts';
export { startAdapterDelivery } from './delivery.ts';
export type { Eta, MeasuredRun } from './eta.ts';
export { EtaEstimator } from './eta.ts';
export type {
  AllowedOrigin,
  FetchedImage,
  FetchGuard,
  FetchGuardOptions,
  FetchRefusal,
} from './fetch-guard.ts';
export { createFetchGuard, FetchRefusedError, isPublicAddress } from './fetch-guard.ts';
export type { ImageIngest, StoredImage } from './images.ts';
export { createImageIngest, looksLikeImage } from './images.ts';
export { checkLimits } from './limits.ts';
export type { EtaStyle, RenderedImage, RenderedReply, RenderStyle } from './render.ts';
export {
  DISCORD_MAX_CHARS,
  isProgressText,
  jobNotes,
  renderCancelled,
  renderEta,
  renderProgress,
  renderReply,
  SLACK_MAX_CHARS,
  splitMessage,
} from './render.ts';
export type {
  Attachment,
  ButtonAction,
  Command,
  ConfigChange,
  InboundTurn,
  Platform,
  PostedImages,
  ThreadMessage,
  TurnUser,
} from './turn.ts';
export { authorKey } from './turn.ts';
