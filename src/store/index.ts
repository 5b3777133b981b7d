export { connect, connectWithRetry, describeDatabase, StoreConnectionError } from './connect.ts';
export { DeliveryClaimError } from './store.ts';
export * from './types.ts';
