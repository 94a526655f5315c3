// idem-example runs one idempotent "create order" request twice through
// Run: the first time the work runs, the second time the stored result is
// replayed.
//
//	idem-example -server=127.0.0.1:50051 -key=order-42
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"time"

	"idem"
)

func main() {
	server := flag.String("server", "127.0.0.1:50051", "Idem server HOST:PORT")
	key := flag.String("key", fmt.Sprintf("order-%d", time.Now().UnixNano()), "idempotency key")
	flag.Parse()

	client, err := idem.Dial(*server)
	if err != nil {
		log.Fatalf("dial: %v", err)
	}
	defer client.Close()

	body := []byte(`{"item":"book","quantity":1}`)
	fp := idem.FingerprintParts([]byte("POST"), []byte("/v1/orders"), body)
	for i := 0; i < 2; i++ {
		res, err := client.Run(context.Background(), "orders", *key, fp, idem.RunOptions{},
			func(ctx context.Context, token uint64) (idem.Result, error) {
				fmt.Printf("creating the order (fencing token %d)\n", token)
				return idem.Result{Code: 201, Body: []byte(`{"order":"` + *key + `"}`)}, nil
			})
		if err != nil {
			log.Fatalf("create order: %v", err)
		}
		if res.Replayed {
			fmt.Printf("replayed %s (nothing ran again): %d %s\n", *key, res.Code, res.Body)
		} else {
			fmt.Printf("created %s: %d %s\n", *key, res.Code, res.Body)
		}
	}
}
