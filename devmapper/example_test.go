package devmapper_test

import (
	"fmt"

	"github.com/dmthin/dmthin/devmapper"
)

// A thin-pool status line, as DM_TABLE_STATUS (or dmsetup status) gives it,
// parsed into its fields.
func ExampleParseThinPoolStatus() {
	st, err := devmapper.ParseThinPoolStatus("3 141/4096 1024/16384 - rw discard_passdown queue_if_no_space - 1024")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("mode:", st.Mode)
	fmt.Println("transaction:", st.TransactionID)
	fmt.Printf("data: %d of %d blocks\n", st.UsedDataBlocks, st.TotalDataBlocks)
	fmt.Printf("metadata: %d of %d blocks\n", st.UsedMetadataBlocks, st.TotalMetadata)
	fmt.Println("needs check:", st.NeedsCheck)
	// Output:
	// mode: rw
	// transaction: 3
	// data: 1024 of 16384 blocks
	// metadata: 141 of 4096 blocks
	// needs check: false
}

// Tables are values: a thin pool over a metadata and a data device, and a
// thin device in it, printed as the kernel reads them, and parsed back.
func ExampleTable() {
	pool := devmapper.Table{{
		Length: 2097152, // 1 GiB in sectors
		Params: devmapper.ThinPoolParams{
			Metadata:     devmapper.Dev{Major: 7, Minor: 1},
			Data:         devmapper.Dev{Major: 7, Minor: 0},
			BlockSize:    128, // 64 KiB
			LowWaterMark: 32,
		},
	}}
	thin := devmapper.Table{{
		Length: 204800,
		Params: devmapper.ThinParams{Pool: devmapper.Dev{Major: 254, Minor: 0}, ID: 7},
	}}
	fmt.Print(pool)
	fmt.Print(thin)
	back, err := devmapper.ParseTable(thin.String())
	fmt.Println(back.String() == thin.String(), err)
	// Output:
	// 0 2097152 thin-pool 7:1 7:0 128 32 0
	// 0 204800 thin 254:0 7
	// true <nil>
}
