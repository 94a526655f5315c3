// idem-interop drives single calls from Go for the cross-language tests:
//
//	idem-interop -server=H:P -op=complete -ns=N -key=K -token=T -body=B
//	idem-interop -server=H:P -op=lookup -ns=N -key=K      (prints the body)
//	idem-interop -server=H:P -op=begin -ns=N -key=K -fingerprint=HEX
//	                                   (prints the outcome, and a replay's code and body)
//	idem-interop -op=fingerprint PART...                   (prints hex)
package main

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"os"

	"idem"
)

func main() {
	server := flag.String("server", "127.0.0.1:50051", "Idem server HOST:PORT")
	op := flag.String("op", "", "complete, lookup or fingerprint")
	ns := flag.String("ns", "", "namespace")
	key := flag.String("key", "", "key")
	token := flag.Uint64("token", 0, "fencing token (complete)")
	body := flag.String("body", "", "result body (complete)")
	code := flag.Int("code", 200, "result code (complete)")
	fingerprint := flag.String("fingerprint", "", "request fingerprint in hex (begin)")
	flag.Parse()

	if *op == "fingerprint" {
		var parts [][]byte
		for _, p := range flag.Args() {
			parts = append(parts, []byte(p))
		}
		fmt.Println(hex.EncodeToString(idem.FingerprintParts(parts...)))
		return
	}
	client, err := idem.Dial(*server)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer client.Close()
	ctx := context.Background()
	switch *op {
	case "complete":
		err = client.Complete(ctx, *ns, *key, *token, idem.Result{Code: int32(*code), Body: []byte(*body)})
	case "begin":
		var fp []byte
		if fp, err = hex.DecodeString(*fingerprint); err != nil {
			break
		}
		var begun *idem.Begun
		begun, err = client.Begin(ctx, *ns, *key, fp, idem.BeginOptions{})
		if err == nil {
			fmt.Println(begun.Outcome)
			if begun.Result != nil {
				fmt.Printf("%d %s\n", begun.Result.Code, begun.Result.Body)
			}
		}
	case "lookup":
		var state string
		var res *idem.Result
		state, res, err = client.Lookup(ctx, *ns, *key)
		if err == nil {
			fmt.Println(state)
			if res != nil {
				fmt.Printf("%d %s\n", res.Code, res.Body)
			}
		}
	default:
		err = fmt.Errorf("unknown -op %q", *op)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
