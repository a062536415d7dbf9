package capability

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/mandate-authz/mandate/store"
)

// useKindPrefix leads the record kind of one block's uses: each block with
// a use limit has its own kind, so counting its uses reads only them.
const useKindPrefix = "capability.use."

// maxUseAttempts bounds the retries of a use that lost a race.
const maxUseAttempts = 8

// RecordStore is the part of a store that StoreUses and the minted-token
// registry need.
type RecordStore interface {
	RecordWriter
	ReadRecords(ctx context.Context, kind string) ([]store.Record, store.Revision, error)
}

// StoreUses counts uses in the store, so that a use limit holds across
// every replica: the k-th use of a block creates the record k of the
// block's kind, and Create's conflict on an existing record means another
// call took that use first, so no two calls can take the same one.
type StoreUses struct {
	Records RecordStore
}

// Use takes one use of every block in limits, all or none.
func (u *StoreUses) Use(ctx context.Context, limits map[string]int) (bool, error) {
	for range maxUseAttempts {
		muts := make([]store.RecordMutation, 0, len(limits))
		for id, limit := range limits {
			kind := useKindPrefix + id
			used, _, err := u.Records.ReadRecords(ctx, kind)
			if err != nil {
				return false, fmt.Errorf("counting uses of block %s: %w", id, err)
			}
			if len(used) >= limit {
				return false, nil
			}
			muts = append(muts, store.RecordMutation{Op: store.Create, Record: store.Record{Kind: kind, ID: strconv.Itoa(len(used) + 1)}})
		}
		_, err := u.Records.WriteRecords(ctx, muts)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, store.ErrRecordExists) {
			return false, fmt.Errorf("recording a use: %w", err)
		}
	}
	return false, fmt.Errorf("recording a use: lost the race %d times", maxUseAttempts)
}
