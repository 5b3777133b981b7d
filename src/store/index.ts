export {
  connect,
  connectWithRetry,
  describeDatabase,
  openDatabase,
  StoreConnectionError,
} from './connect.ts';
export { DeliveryClaimError } from './store.ts';
export * from './types.ts';
