package embedded

import bolt "go.etcd.io/bbolt"

// Counts reports how many entries each bucket holds, so tests can see what
// garbage collection removed.
func (s *Store) Counts() (versions, changes, schemas, expiry int) {
	s.db.View(func(tx *bolt.Tx) error {
		versions = tx.Bucket(bucketRels).Stats().KeyN
		changes = tx.Bucket(bucketChanges).Stats().KeyN
		schemas = tx.Bucket(bucketSchemas).Stats().KeyN
		expiry = tx.Bucket(bucketExpiry).Stats().KeyN
		return nil
	})
	return
}
