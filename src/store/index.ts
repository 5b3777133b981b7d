export {
  connect,
  connectWithRetry,
  describeDatabase,
  openDatabase,
  StoreConnectionError,
} from './connect.ts';
export { DeliveryClaimError } from './jobs.ts';
export * from './types.ts';
