from charlm.cli.sample import main

if __name__ == "__main__":
    main()
